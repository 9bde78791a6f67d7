"""Generation tasks: continue each (k-shot) prompt with KV-cache decoding, score against the references
with ROUGE-1/2/L and BLEU. The continuation is cut at the first stop string (default: the shot separator
"\n\n", lm-eval's `until`) or EOS, so the model's next invented example does not count against it.

Prompts longer than the model's context keep their last tokens (lm-eval's left truncation), leaving room
for the new tokens; how many were cut is printed and recorded (`truncated_prompts`)."""

from __future__ import annotations

from collections.abc import Sequence

from chinchax.errors import UserError
from chinchax.evaluation import fewshot
from chinchax.evaluation.metrics import bleu, rouge
from chinchax.evaluation.tasks import Task
from chinchax.model.decoding import SamplingConfig, generate


def model_prompts(model, tokenizer, texts: list[str], max_new_tokens: int | None = None
                  ) -> tuple[list[list[int]], list[list[int]] | None]:
    """(decoder prompts, encoder inputs or None): how each variant is asked to continue a text. With
    `max_new_tokens`, prompts are left-truncated to fit the context (see `fit_prompts`)."""
    prompts, encoder_inputs, _ = fit_prompts(model, tokenizer, texts, max_new_tokens)
    return prompts, encoder_inputs


def fit_prompts(model, tokenizer, texts: list[str], max_new_tokens: int | None):
    """(decoder prompts, encoder inputs or None, tokens dropped per text)."""
    variant = model.cfg.variant
    if variant == "encoder_only":
        raise UserError("an encoder-only model cannot generate; evaluate it on multiple-choice tasks instead")
    ids = [tokenizer.encode(t) for t in texts]
    max_len = model.cfg.max_len
    if variant == "encoder_decoder":
        kept = [i[-max_len:] if len(i) > max_len else i for i in ids]  # the encoder reads up to max_len
        return [[tokenizer.bos_id] for _ in texts], [k or [tokenizer.eos_id] for k in kept], \
            [len(i) - len(k) for i, k in zip(ids, kept, strict=True)]
    if max_new_tokens is None:
        return [[tokenizer.bos_id, *i] for i in ids], None, [0] * len(ids)
    room = max_len - 1 - max_new_tokens  # BOS + prompt + new tokens must fit the context
    if room < 1:
        raise UserError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context of "
                        f"{max_len} tokens; lower --max-new-tokens")
    kept = [i[-room:] if len(i) > room else i for i in ids]
    return [[tokenizer.bos_id, *k] for k in kept], None, [len(i) - len(k) for i, k in zip(ids, kept, strict=True)]


def cut_at(text: str, until: Sequence[str]) -> str:
    """The text up to the earliest of the stop strings (lm-eval's generate_until)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def continue_texts(model, tokenizer, texts: list[str], sampling: SamplingConfig, *, batch_size: int = 8,
                   until: str | Sequence[str] | None = fewshot.SEPARATOR, name: str = "generation",
                   notes: dict | None = None) -> list[str]:
    """Generate a continuation for every text (batched; stop at EOS or at the first `until` string). The
    truncation counts go into `notes` when given."""
    until = [until] if isinstance(until, str) else list(until or [])
    stop = tuple(dict.fromkeys((*sampling.stop_tokens, tokenizer.eos_id)))
    sampling = SamplingConfig(**{**sampling.__dict__, "stop_tokens": stop})
    prompts, encoder_inputs, dropped = fit_prompts(model, tokenizer, texts, sampling.max_new_tokens)
    note = fewshot.report_truncation(name, sum(d > 0 for d in dropped), len(texts), max(dropped, default=0),
                                     model.cfg.max_len)
    if notes is not None:
        notes.update(note)
    outputs = []
    for start in range(0, len(texts), batch_size):
        chunk = list(range(start, min(start + batch_size, len(texts))))
        chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # a fixed batch: one compilation
        result = generate(model, [prompts[i] for i in chunk], sampling,
                          encoder_inputs=None if encoder_inputs is None else [encoder_inputs[i] for i in chunk],
                          pad_id=tokenizer.pad_id)
        for tokens in result.as_lists()[: len(texts) - start]:
            outputs.append(cut_at(tokenizer.decode(tokens), until))
    return outputs


def evaluate_generation(model, tokenizer, task: Task, sampling: SamplingConfig, *, shots: int = 0, seed: int = 0,
                        limit: int | None = None, batch_size: int = 8) -> dict:
    if task.kind != "generation":
        raise UserError(f"task {task.name!r} is a {task.kind} task, not a generation task")
    examples = list(task.examples)[:limit] if limit else list(task.examples)
    texts = fewshot.prompts(Task(task.name, task.kind, examples, task.shots, task.shots_are_examples), shots, seed)
    notes: dict = {}
    predictions = [p.strip() for p in continue_texts(model, tokenizer, texts, sampling, batch_size=batch_size,
                                                     name=task.name, notes=notes)]
    references = [list(e.references) for e in examples]
    out = {"task": task.name, "kind": task.kind, "shots": shots, "examples": len(examples), **notes,
           **rouge(predictions, references), **bleu(predictions, references)}
    out["samples"] = [{"prompt": e.prompt, "prediction": p, "references": list(e.references)}
                      for e, p in zip(examples[:5], predictions[:5], strict=True)]
    return out
