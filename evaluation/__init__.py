"""Evaluation of trained runs (`chinchax eval`, `chinchax generate`; see docs/evaluation.md).

scoring.py           log-likelihood of a continuation given a context, the natural way per model variant
losses.py            validation loss (nats/token, stderr, bits per byte) and conditional loss
tasks.py             multiple-choice and generation tasks from JSONL or prepared TFDS datasets
fewshot.py           k-shot prompts, seeded per example
multiple_choice.py   accuracy by log-likelihood (raw, per byte, per token) with standard errors
generation_tasks.py  KV-cache generation scored with ROUGE and BLEU (metrics.py)
run_loading.py       any run directory (chinchax.rundir's kinds) -> (config, model, tokenizer, step), or its weights
results.py           RUN_DIR/eval.json
icl_curves.py        k-shot results of a sweep: table and plots vs N and compute, a line per k
chain_of_thought.py  chain of thought, self-consistency and direct answering, compared across sizes
lm_eval_model.py     chinchax as an lm-evaluation-harness model; the few-shot sampler; task export
comparable.py        measures every architecture and objective is scored on alike (`chinchax compare`)
lm_eval_main.py      lm-eval's own CLI with the chinchax model registered (`chinchax-lm-eval`)
Decoding itself lives in chinchax.model.decoding.
"""
