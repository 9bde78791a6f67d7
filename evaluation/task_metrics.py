"""Instruction tasks (chinchax.data.instruction_tasks) scored by their own metric, zero-shot.

    run = load_run(run_dir / "merged", soft_prompt=True)  # evaluation.run_loading
    result = score_task(run.model, run.tokenizer, task, limit=64, max_new_tokens=32)
    result["score"], result["stderr"]       # mean over examples and its standard error, in [0, 1]

Metrics (`Task.metric`), each per example, then mean and standard error over examples:
- `exact_match`: the greedy continuation (cut at the first newline: a training document ends with one)
  equals the target, both stripped;
- `rouge`: ROUGE-L F-measure of the greedy continuation against the target, by Google's `rouge-score`
  (its tokenizer, Porter stemmer on, as `chinchax eval`'s generation tasks use it);
- `accuracy`: the option with the highest log-likelihood after the prompt is the target (the multiple-choice
  scorer of `chinchax eval`, lm-eval's `acc`).

The prompt is the one the mixture trains on and holds out (`format_example` with the task's first template)
followed by the space that separates prompt and target in a training document.

Generation for plain models (full, LoRA, QLoRA: merged weights) is `chinchax eval`'s path
(`generation_tasks.continue_texts`: KV-cache decoding). A prompt-tuned model is the base plus P soft vectors
in front of the input, which the KV-cache loop (model/decoding.py) has no input for; it is decoded greedily
without a cache (`_greedy_uncached`: the whole row re-run per new token, one compiled step), for causal
decoders only. At the study's sizes (rows of ~200 tokens, 2 layers) that costs little.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from chinchax.errors import UserError
from chinchax.evaluation.metrics import mean_and_stderr
from chinchax.model.soft_prompt import SoftPrompted

METRICS = ("exact_match", "rouge", "accuracy")
STOP = "\n"  # a training document is prompt + " " + target + "\n" (data.mixtures.register_mixture)


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise UserError(f"unknown task metric {metric!r}; known metrics: {', '.join(METRICS)} "
                        "(set Task.metric to one of them)")
    return metric


def rouge_l(prediction: str, target: str) -> float:
    """ROUGE-L F-measure in [0, 1] (rouge-score, stemmed)."""
    return rouge_l_all([prediction], [target])[0]


def rouge_l_all(predictions: list[str], targets: list[str]) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(t, p)["rougeL"].fmeasure for p, t in zip(predictions, targets, strict=True)]


def exact_match_all(predictions: list[str], targets: list[str]) -> list[float]:
    return [float(p.strip() == t.strip()) for p, t in zip(predictions, targets, strict=True)]


def per_example(metric: str, predictions: list[str], targets: list[str]) -> list[float]:
    """Scores of generated texts by a generation metric (exact_match or rouge)."""
    check_metric(metric)
    if metric == "accuracy":
        raise UserError("accuracy is scored by likelihood over a task's options, not from generated text; "
                        "use score_task")
    return rouge_l_all(predictions, targets) if metric == "rouge" else exact_match_all(predictions, targets)


# --- models -----------------------------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("graphdef",))
def _next_tokens(graphdef, state, tokens_BL, last_B):
    """Greedy next token after position last_B of each right-padded row (causal: later padding is unseen)."""
    model = nnx.merge(graphdef, state)
    model.eval()
    logits_BLV = model(tokens_BL)
    logits_BV = jnp.take_along_axis(logits_BLV, last_B[:, None, None], axis=1)[:, 0]
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)


def _greedy_uncached(model, tokenizer, texts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    from chinchax.evaluation.generation_tasks import cut_at, fit_prompts

    cfg = model.cfg
    if cfg.variant != "decoder_only" or cfg.attention != "causal":
        raise UserError(f"generation with a soft prompt is implemented for causal decoders; this model is "
                        f"{cfg.variant} with attention={cfg.attention!r}: score it by loss, or fine-tune with lora")
    prompts, _, _ = fit_prompts(model, tokenizer, texts, max_new_tokens)
    width = -(-(max(len(p) for p in prompts) + max_new_tokens) // 32) * 32  # a few widths: a few compiles
    graphdef, state = nnx.split(model)
    stops = {tokenizer.eos_id, *tokenizer.encode(STOP)}
    outputs = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # a fixed batch: one compilation
        tokens_BL = np.full((batch_size, width), tokenizer.pad_id, np.int32)
        for b, p in enumerate(chunk):
            tokens_BL[b, : len(p)] = p
        lengths_B = np.asarray([len(p) for p in chunk], np.int32)
        new = [[] for _ in chunk]
        done = np.zeros(batch_size, bool)
        for i in range(max_new_tokens):
            next_B = np.asarray(_next_tokens(graphdef, state, jnp.asarray(tokens_BL), jnp.asarray(lengths_B + i - 1)))
            for b in range(batch_size):
                if not done[b]:
                    tokens_BL[b, lengths_B[b] + i] = next_B[b]
                    new[b].append(int(next_B[b]))
                    done[b] = int(next_B[b]) in stops
            if done.all():
                break
        outputs += [cut_at(tokenizer.decode(t), [STOP]) for t in new[: len(prompts) - start]]
    return outputs


def generate_texts(model, tokenizer, texts: list[str], *, max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy continuations, cut at the first newline."""
    if isinstance(model, SoftPrompted):
        return _greedy_uncached(model, tokenizer, texts, max_new_tokens, batch_size)
    from chinchax.evaluation.generation_tasks import continue_texts
    from chinchax.model.decoding import SamplingConfig

    return continue_texts(model, tokenizer, texts, SamplingConfig(max_new_tokens=max_new_tokens),
                          batch_size=batch_size, until=STOP, name="held-out task")


# --- tasks ------------------------------------------------------------------------------------------------


def _accuracy(model, tokenizer, prompts: list[str], examples, batch_size: int) -> list[float]:
    from chinchax.evaluation.multiple_choice import score_pairs
    from chinchax.evaluation.scoring import Scorer

    for i, ex in enumerate(examples):
        if ex.target not in ex.options:
            raise UserError(f"example {i} of an accuracy task has target {ex.target!r} among no options "
                            f"({list(ex.options)}); multiple-choice examples need their options")
    texts = [(p, " " + option) for p, ex in zip(prompts, examples, strict=True) for option in ex.options]
    prompt_of = [i for i, ex in enumerate(examples) for _ in ex.options]
    scorer = Scorer(model, bos_id=tokenizer.bos_id, mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id,
                    batch_size=batch_size)
    scores, _ = score_pairs(scorer, tokenizer, texts, name="held-out task", prompt_of=prompt_of)
    correct, start = [], 0
    for ex in examples:
        logprob = [s.logprob for s in scores[start : start + len(ex.options)]]
        start += len(ex.options)
        correct.append(float(ex.options[int(np.argmax(logprob))] == ex.target))
    return correct


def score_task(model, tokenizer, task, *, limit: int | None = None, max_new_tokens: int = 32,
               batch_size: int = 8, n_samples: int = 3) -> dict:
    """`task` (an instruction_tasks.Task) zero-shot, by `task.metric`: score in [0, 1] and its standard error."""
    from chinchax.data.mixtures import format_example

    metric = check_metric(task.metric)
    examples = list(task.examples)[:limit] if limit else list(task.examples)
    if not examples:
        raise UserError(f"task {task.name!r} has no examples to score")
    prompts = [format_example(task, ex, task.templates[0]) for ex in examples]
    targets = [ex.target for ex in examples]
    if metric == "accuracy":
        values, predictions = _accuracy(model, tokenizer, prompts, examples, batch_size), []
    else:
        predictions = [p.strip() for p in generate_texts(model, tokenizer, [p + " " for p in prompts],
                                                          max_new_tokens=max_new_tokens, batch_size=batch_size)]
        values = per_example(metric, predictions, targets)
    score, stderr = mean_and_stderr(values)
    return {"task": task.name, "metric": metric, "score": score, "stderr": stderr, "examples": len(examples),
            "samples": [{"prediction": p, "target": t} for p, t in zip(predictions[:n_samples], targets, strict=False)]}
