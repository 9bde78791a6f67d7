"""`chinchax compare`, step 2: the held-out measure set, every run scored on it, and the results table.

Measures are stored per run in `<out>/measures/<run>.json` (strict JSON, atomic) with the measure set's
fingerprint and the checkpoint step they were taken at: a re-run rescales nothing it has already measured
on the same items at the same step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from chinchax.errors import UserError

MAX_DOCUMENTS = 4000  # held-out documents read to build the items (a few MB of text; plenty for 256 pairs)


def measure_set(plan, params: dict):
    """The MeasureSet every run of `plan` is scored on, from the (shared) held-out split; and a note on
    the corpus it came from."""
    from chinchax.data.pipeline import open_documents
    from chinchax.data.tokenizers import load_tokenizer
    from chinchax.evaluation.comparable import build_measure_set

    data = {(r.experiment.data.source, r.experiment.data.tokenizer, r.experiment.data.eval_split) for r in plan.runs}
    if len(data) != 1:
        raise UserError(f"the families read different data or tokenizers ({sorted(data)}); a comparison needs one "
                        "corpus and one tokenizer for every family (set them in the sweep's `overrides:`)")
    cfg = plan.runs[0].experiment
    docs = open_documents(cfg.data, cfg.data.eval_split)
    texts = [docs[i] for i in range(min(len(docs), MAX_DOCUMENTS))]
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    mset = build_measure_set(texts, tokenizer, **params)
    corpus = {"source": cfg.data.source, "split": cfg.data.eval_split, "tokenizer": cfg.data.tokenizer,
              "documents_read": len(texts), **{k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()},
              "fingerprint": mset.fingerprint}
    return mset, corpus


def _stored(path: Path, fingerprint: str, step: int) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if data.get("fingerprint") == fingerprint and data.get("step") == step else None


def _final_step(run_dir: Path) -> int | None:
    try:
        return int(json.loads((run_dir / "run.json").read_text())["steps"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def measure_runs(rows: list[dict], sweep, mset, directory: Path, say=print) -> dict[str, dict]:
    """Every finished run's measures (run id -> measure_model's dict + step), computed or read back."""
    import jax

    from chinchax import jsonio
    from chinchax.evaluation.comparable import measure_model
    from chinchax.evaluation.run_loading import load_run
    from chinchax.fileio import write_text_atomic
    from chinchax.sharding import model_context

    # Runs of one shape share scoring programs; re-runs load them from disk.
    jax.config.update("jax_compilation_cache_dir", str((directory.parent / "jax_cache").resolve()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    directory.mkdir(parents=True, exist_ok=True)
    measured = {}
    for i, row in enumerate(rows):
        run_id = row["run"]
        path = directory / f"{run_id}.json"
        stored = _stored(path, mset.fingerprint, _final_step(sweep.run_dir(run_id)))
        if stored is not None:
            measured[run_id] = stored
            continue
        run = load_run(sweep.run_dir(run_id))
        with model_context(run.model):
            result = {**measure_model(run.model, run.tokenizer, mset), "step": run.step, "run": run_id}
        write_text_atomic(path, jsonio.dumps(result))
        measured[run_id] = result
        mc = "  ".join(f"{k}-shot acc {result[f'mc{k}']['acc']:.3f}" for k in mset.shots)
        say(f"measured {i + 1}/{len(rows)} {run_id}: {result['conditional_bpb']:.4f} bits/byte  {mc}")
    return measured


def results_table(rows: list[dict], measured: dict[str, dict], plan, sweep):
    """One row per measured run (plan order): the run's size, compute and training loss, and its
    comparable measures; with the per-item nats and bytes (runs x items) for the paired bootstrap."""
    planned = plan.by_id()
    records, nll, n_bytes = [], [], []
    for row in rows:
        m = measured.get(row["run"])
        if m is None:
            continue
        run = planned[row["run"]]
        record = {
            "run": row["run"], "family": run.family, "budget": run.budget,
            "variant": run.experiment.model.variant, "attention": run.experiment.model.attention,
            "objective": run.experiment.data.objective,
            "d_model": run.d_model, "n_layers": run.n_layers, "n_params": row["n_params"],
            "n_params_non_embedding": row["n_params_non_embedding"], "n_tokens": row["n_tokens"],
            "flops": row["flops"], "flops_detailed": _number(row.get("flops_detailed")),
            "steps": row.get("steps"), "learning_rate": row.get("learning_rate"),
            "objective_loss": row["loss"],  # the run's own eval loss: comparable within an objective only
            "conditional_bpb": m["conditional_bpb"], "conditional_bpb_stderr": m["conditional_bpb_stderr"],
            "wall_time_s": _number(row.get("wall_time_s")),
        }
        for key, value in m.items():
            if key.startswith("mc") and isinstance(value, dict):
                for name in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "chance"):
                    record[f"{key}_{name}"] = value[name]
        records.append(record)
        nll.append(m["pair_nll"])
        n_bytes.append(m["pair_bytes"])
    if not records:
        raise UserError("no finished run could be measured")
    return pd.DataFrame.from_records(records), np.asarray(nll, np.float64), np.asarray(n_bytes, np.float64)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
