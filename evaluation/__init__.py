"""Evaluation of trained runs (`chinchax eval`, `chinchax generate`; see docs/evaluation.md).

scoring.py           log-likelihood of a continuation given a context, the natural way per model variant
losses.py            validation loss (nats/token, stderr, bits per byte) and conditional loss
tasks.py             multiple-choice and generation tasks from JSONL or prepared TFDS datasets
fewshot.py           k-shot prompts, seeded per example
multiple_choice.py   accuracy by log-likelihood (raw, per byte, per token) with standard errors
generation_tasks.py  KV-cache generation scored with ROUGE and BLEU (metrics.py)
run_loading.py       a run directory -> (config, model, tokenizer, step) with the trainer's restore
results.py           RUN_DIR/eval.json
Decoding itself lives in chinchax.model.decoding.
"""
