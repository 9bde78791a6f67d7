"""Generation tasks: continue each (k-shot) prompt with KV-cache decoding, score against the references
with ROUGE-1/2/L and BLEU. The continuation is cut at the shot separator ("\n\n") or EOS, whichever
comes first, so the model's next invented example does not count against it."""

from __future__ import annotations

from chinchax.errors import UserError
from chinchax.evaluation import fewshot
from chinchax.evaluation.metrics import bleu, rouge
from chinchax.evaluation.tasks import Task
from chinchax.model.decoding import SamplingConfig, generate


def model_prompts(model, tokenizer, texts: list[str]) -> tuple[list[list[int]], list[list[int]] | None]:
    """(decoder prompts, encoder inputs or None): how each variant is asked to continue a text."""
    variant = model.cfg.variant
    if variant == "encoder_only":
        raise UserError("an encoder-only model cannot generate; evaluate it on multiple-choice tasks instead")
    ids = [tokenizer.encode(t) for t in texts]
    if variant == "encoder_decoder":
        return [[tokenizer.bos_id] for _ in texts], [i or [tokenizer.eos_id] for i in ids]
    return [[tokenizer.bos_id, *i] for i in ids], None


def continue_texts(model, tokenizer, texts: list[str], sampling: SamplingConfig, *, batch_size: int = 8,
                   until: str | None = fewshot.SEPARATOR) -> list[str]:
    """Generate a continuation for every text (batched; stop at EOS or at `until`)."""
    stop = tuple(dict.fromkeys((*sampling.stop_tokens, tokenizer.eos_id)))
    sampling = SamplingConfig(**{**sampling.__dict__, "stop_tokens": stop})
    outputs = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # a fixed batch: one compilation
        prompts, encoder_inputs = model_prompts(model, tokenizer, chunk)
        result = generate(model, prompts, sampling, encoder_inputs=encoder_inputs, pad_id=tokenizer.pad_id)
        for tokens in result.as_lists()[: len(texts) - start]:
            text = tokenizer.decode(tokens)
            outputs.append(text.split(until)[0] if until else text)
    return outputs


def evaluate_generation(model, tokenizer, task: Task, sampling: SamplingConfig, *, shots: int = 0, seed: int = 0,
                        limit: int | None = None, batch_size: int = 8) -> dict:
    if task.kind != "generation":
        raise UserError(f"task {task.name!r} is a {task.kind} task, not a generation task")
    examples = list(task.examples)[:limit] if limit else list(task.examples)
    texts = fewshot.prompts(Task(task.name, task.kind, examples, task.shots, task.shots_are_examples), shots, seed)
    predictions = [p.strip() for p in continue_texts(model, tokenizer, texts, sampling, batch_size=batch_size)]
    references = [list(e.references) for e in examples]
    out = {"task": task.name, "kind": task.kind, "shots": shots, "examples": len(examples),
           **rouge(predictions, references), **bleu(predictions, references)}
    out["samples"] = [{"prompt": e.prompt, "prediction": p, "references": list(e.references)}
                      for e, p in zip(examples[:5], predictions[:5], strict=True)]
    return out
