"""Where the numbers of a run go: metrics.jsonl, wandb (offline unless a key is configured), a progress
bar, and run.json. Only process 0 writes; every write of a whole file is atomic (tmp + os.replace)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from chinchax import jsonio
from chinchax.errors import UserError
from chinchax.fileio import is_remote, run_path
from chinchax.fileio import write_text_atomic as atomic_write_text
from chinchax.jsonio import read_jsonl  # noqa: F401 (train.metrics.read_jsonl, as before)

# Fields of a row that depend on wall-clock time: they differ between two runs of the same config.
TIMING_FIELDS = ("step_time_s", "tokens_per_s", "mfu")


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def _clean(value):
    value = _jsonable(value) if hasattr(value, "item") else value
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf: null, as jsonio writes it (and wandb is not sent it)
    return value


class MetricsLogger:
    """Appends rows to metrics.jsonl (and wandb); on resume, drops rows after the restored step first, so
    the file reads exactly like an uninterrupted run's.

    On gs:// (objects cannot be appended to) the rows are kept here and the whole file is uploaded again by
    `flush`: before every checkpoint (the trainer calls it, so a trusted checkpoint never has rows missing
    before it), every `REMOTE_FLUSH_S` seconds, and at close. Rows after the last upload are lost in a kill,
    as they would be dropped on resume anyway."""

    REMOTE_FLUSH_S = 60.0

    def __init__(self, run_dir: Path, *, resume_step: int, enabled: bool, wandb_run=None):
        self.path = run_path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.wandb_run = wandb_run
        self._remote = is_remote(self.path)
        if enabled:
            kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(jsonio.dumps(r) + "\n" for r in kept))
            if self._remote:
                self._lines = [jsonio.dumps(r) + "\n" for r in kept]
                self._flushed_at = time.monotonic()
            else:
                self._file = open(self.path, "a")

    def rows(self) -> list[dict]:
        if self.enabled and self._remote:
            return [json.loads(line) for line in self._lines]
        return read_jsonl(self.path) if self.enabled else []

    def flush(self) -> None:
        """Store every row logged so far (gs://: one upload of the whole file; local: already on disk)."""
        if self.enabled and self._remote:
            atomic_write_text(self.path, "".join(self._lines))
            self._flushed_at = time.monotonic()

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {k: _clean(v) for k, v in row.items()}
        if self._remote:
            self._lines.append(jsonio.dumps(row) + "\n")
            if time.monotonic() - self._flushed_at > self.REMOTE_FLUSH_S:
                self.flush()
        else:
            self._file.write(jsonio.dumps(row) + "\n")
            self._file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(
                {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))},
                step=row["step"],
            )

    def close(self, summary: dict | None = None) -> None:
        """Close the file and finish the wandb run, with `summary` (run.json of a finished run) as its summary."""
        if self.enabled:
            if self._remote:
                self.flush()
            else:
                self._file.close()
            if self.wandb_run is not None:
                if summary:
                    # wandb holds the last step's row until the next step or finish: commit it first, or its
                    # per-step mfu would replace the run's mean mfu in the summary
                    self.wandb_run.log({}, commit=True)
                    self.wandb_run.summary.update(wandb_summary(summary))
                self.wandb_run.finish()


def wandb_summary(result: dict) -> dict:
    """The numbers of run.json a dashboard compares runs by (final eval loss, FLOPs by each convention, wall
    time, MFU, N, D, ...): every finite number and the status; not the config (that is the run's config)."""
    out = {"status": result.get("status")}
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = value
    return out


def plot_fields(cfg) -> dict:
    """Flat config fields a researcher groups and plots runs by on a dashboard (the nested config has them
    too, but under model./data./trainer. names and without N or D): exact parameter counts, tokens, shape."""
    from chinchax.model.counting import count_params

    counts = count_params(cfg.model)
    tc = cfg.trainer
    return {
        "n_params": counts.total,
        "n_params_embedding": counts.embedding,
        "n_params_non_embedding": counts.non_embedding,
        "n_tokens": cfg.total_steps * tc.batch_size * cfg.data.seq_len,
        "steps": cfg.total_steps,
        "d_model": cfg.model.d_model,
        "n_layers": cfg.model.n_layers,
        "n_heads": cfg.model.n_heads,
        "variant": cfg.model.variant,
        "objective": cfg.data.objective,
        "seed": tc.seed,
        "learning_rate": cfg.optimizer.learning_rate,
        "batch_size": tc.batch_size,
        "seq_len": cfg.data.seq_len,
    }


def start_run_wandb(cfg, run_dir: Path):
    """The wandb run of a training run (or None): its group, job type and tags from trainer.wandb_*, its
    config the resolved config plus `plot_fields` plus trainer.wandb_config (the planner's budget, family)."""
    tc = cfg.trainer
    if not tc.wandb_project or tc.wandb_mode == "disabled":
        return None
    from chinchax import configlib

    config = {**configlib.to_dict(cfg), **plot_fields(cfg), **tc.wandb_config}
    return start_wandb(tc.wandb_project, tc.wandb_mode, run_dir, run_path(run_dir).name, config,
                       group=tc.wandb_group, job_type=tc.wandb_job_type, tags=tc.wandb_tags)


def wandb_key_configured() -> bool:
    """A W&B API key is set: WANDB_API_KEY, or a netrc entry for the W&B host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def wandb_mode(mode: str) -> str:
    """The mode wandb is started with. 'auto': without a key always offline (even with WANDB_MODE=online:
    without a key wandb could only fail, after looking its server up), with a key WANDB_MODE if set, else
    online. Explicit 'online' without a key is refused here, before wandb touches the network."""
    has_key = wandb_key_configured()
    if mode == "auto":
        env = (os.environ.get("WANDB_MODE") or "").strip().lower()
        if env in ("offline", "dryrun", "disabled"):
            return "offline" if env == "dryrun" else env
        return "online" if has_key else "offline"
    if mode == "online" and not has_key:
        raise UserError(
            "trainer.wandb_mode=online needs a W&B API key (WANDB_API_KEY, or `wandb login`); use "
            "trainer.wandb_mode=auto or offline to log locally"
        )
    return mode


def start_wandb(project: str | None, mode: str, run_dir: Path, run_name: str, config: dict, *,
                group: str | None = None, job_type: str | None = None, tags=(), fresh_id: bool = False):
    """A wandb run, or None. Nothing touches the network unless a key is configured (`wandb_mode`). The run's
    id is its name (a resumed training run continues its W&B run), or with `fresh_id` a new one per call."""
    if not project or mode == "disabled":
        return None
    mode = wandb_mode(mode)
    if mode == "disabled":
        return None
    import wandb

    return wandb.init(
        project=project,
        name=run_name,
        id=None if fresh_id else run_name,
        resume=None if fresh_id else "allow",
        mode=mode,
        dir=None if is_remote(run_dir) else str(run_dir),  # wandb writes locally; on gs:// into ./wandb
        config=config,
        group=group,
        job_type=job_type,
        tags=list(tags) or None,
    )


class Progress:
    """tqdm bar: step, loss, tokens/s; tqdm itself shows the ETA."""

    def __init__(self, *, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(self, n: int, loss: float, tokens_per_s: float | None) -> None:
        if self.bar is not None:
            post = {"loss": f"{loss:.4f}"}
            if tokens_per_s:
                post["tok/s"] = f"{tokens_per_s:,.0f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
