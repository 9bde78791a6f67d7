"""`train(cfg)`: one training run, from an ExperimentConfig to a run directory.

    <run_dir>/config.yaml     the resolved config (a re-run with a resume-breaking change is refused)
    <run_dir>/metrics.jsonl   one row per logged step (+ eval rows), see docs/interfaces.md
    <run_dir>/checkpoints/    orbax steps with our manifests (chinchax.train.checkpoint)
    <run_dir>/run.json        written atomically at the end
    <run_dir>/interrupted.json  written when a signal stopped the run (removed when it starts again)

Running the same command again on the same run_dir resumes from the newest good checkpoint: the train
state, the data-iterator position and metrics.jsonl (rows after the checkpoint are dropped and redone)
continue exactly where the uninterrupted run would be. SIGTERM or SIGINT stops the run at the next call
boundary after a checkpoint there (train/preemption.py): `TrainingPreempted`, exit code 75 from the CLI.
The loop never waits for the device except on checkpoint steps: step t+1 is dispatched before the
metrics of step t are fetched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from chinchax import configlib
from chinchax.errors import UserError
from chinchax.fileio import run_path
from chinchax.jsonio import write_json
from chinchax.train.config import RESUME_SAFE_KEYS, RESUME_SAFE_PREFIXES, ExperimentConfig
from chinchax.train.diskspace import DiskFull, from_os_error, is_disk_full
from chinchax.train.metrics import MetricsLogger, Progress, atomic_write_text, start_run_wandb
from chinchax.train.preemption import Preemption, TrainingPreempted

# Every eval row's loss sum and weight at the end of the run (rows are the same for every run of one data
# config), so two runs can be compared row by row: a paired difference has a far smaller standard error.
EVAL_ROWS = "eval_rows.json"
# Written by a run a signal stopped (the step it saved, the signal); a sweep reads such a run as interrupted.
INTERRUPTED = "interrupted.json"


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/inf."""


# Keys that set the run's length. Extending (or shortening) a run is allowed when it leaves the past alone:
# the learning rates of the steps already taken must be the same under the new length (checked after
# the restore, `check_extension`): a constant schedule, or a wsd run whose cooldown has not begun.
LENGTH_KEYS = frozenset({"trainer.steps", "trainer.tokens"})


def check_resume_compatible(run_dir: Path, cfg: ExperimentConfig) -> int | None:
    """Refuse to resume a run whose resolved config changed in a key that changes the experiment.
    Returns the old run's length in steps (None for a new run); its length may differ (`check_extension`)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    old = traverse_util.flatten_dict(configlib.read_yaml(path), sep=".")
    new = traverse_util.flatten_dict(configlib.to_dict(cfg), sep=".")
    safe = RESUME_SAFE_KEYS | LENGTH_KEYS | {k for k in {*old, *new} if k.startswith(RESUME_SAFE_PREFIXES)}
    configlib.refuse_changed_config(run_dir, old, new, ignored=safe, fix="use a new trainer.run_dir")
    if old.get("trainer.steps") is not None:
        return int(old["trainer.steps"])
    return -(-int(old["trainer.tokens"]) // (cfg.trainer.batch_size * cfg.data.seq_len))


def check_extension(run_dir: Path, cfg: ExperimentConfig, old_steps: int, taken: int, lr_by_step) -> None:
    """A run of `old_steps` that has taken `taken` steps may continue with the new length only if the
    steps taken would have had the same learning rates under it (cosine and linear decay over the whole
    run, and wsd's cooldown, are stretched by a new length: the past would not be this run's)."""
    from chinchax.train.optimizer import make_schedule, schedule_values

    new_steps = cfg.total_steps
    if new_steps == old_steps or taken == 0:
        return
    if taken > new_steps:
        raise UserError(
            f"{run_dir} has already trained {taken} steps; a length of {new_steps} steps "
            f"(trainer.steps/trainer.tokens) would end it before where it stands. Keep the length >= {taken}, or "
            "use a new trainer.run_dir"
        )
    old_lr = schedule_values(make_schedule(cfg.optimizer, old_steps), old_steps)[:taken]
    new_lr = np.asarray(lr_by_step[:taken])
    differ = np.flatnonzero(old_lr != new_lr)
    if differ.size:
        k = int(differ[0])
        opt = cfg.optimizer
        why = {
            "cosine": "a cosine decay spans the whole run, so a new length changes every decayed step's rate",
            "linear": "a linear decay spans the whole run, so a new length changes every decayed step's rate",
            "wsd": f"the wsd cooldown (the last {opt.cooldown_fraction:g} of the run) had already begun, and a "
            "new length moves it",
        }.get(opt.schedule, "the schedule depends on the run's length")
        raise UserError(
            f"{run_dir}: changing the run's length from {old_steps} to {new_steps} steps would change the learning "
            f"rate of steps it has already taken (step {k}: {old_lr[k]:.4g} -> {new_lr[k]:.4g}): {why}. "
            f"The {taken} steps taken would not be those of a {new_steps}-step run. A run can be extended when "
            "its schedule is constant, or wsd before the cooldown begins; otherwise train a new trainer.run_dir "
            "(or branch a wsd run from a checkpoint taken before its cooldown)"
        )


def _default_data(cfg: ExperimentConfig, process_index: int, process_count: int):
    from chinchax.data.pipeline import eval_batches, train_iterator
    from chinchax.data.tokenizers import check_vocab_fits, load_tokenizer

    tokenizer = load_tokenizer(cfg.data.tokenizer)
    check_vocab_fits(tokenizer, cfg.model.vocab_size)
    kw = dict(
        global_batch_size=cfg.trainer.batch_size,
        variant=cfg.model.variant,
        process_index=process_index,
        process_count=process_count,
    )
    return (
        train_iterator(cfg.data, tokenizer, **kw),
        (lambda: eval_batches(cfg.data, tokenizer, **kw)),
        tokenizer,
    )


def train(
    cfg: ExperimentConfig,
    *,
    data: Callable[[int, int], tuple[Iterator, Callable[[], list] | None, Any]] | None = None,
    programs: Callable[[ExperimentConfig, Any], Any] | None = None,
) -> dict:
    """Run (or resume) training; returns the run.json dict. `data(process_index, process_count)` may
    replace the grain pipeline with (train iterator, eval-batches factory or None, tokenizer or None).
    `programs(cfg, mesh)` may replace the compiled programs (train/programs.py's `programs_for`) with others
    of the same interface: fine-tuning trains adapters with the same loop, checkpoints and run.json."""
    from chinchax.train import cpu_threads
    from chinchax.train.distributed import maybe_initialize

    cpu_threads.pin(cfg.trainer.cpu_threads)  # before JAX's CPU backend starts: it sizes its thread pool once
    maybe_initialize(cfg.trainer)  # before any other jax call

    import jax

    from chinchax.train import runlock

    # One trainer per run dir (the primary host holds the lock; the others share its run): released when
    # this call returns or raises, so a sweep worker can train one run after another in one process.
    # SIGTERM/SIGINT stop it at a call boundary, after a checkpoint there (Preemption, handlers restored after).
    try:
        with runlock.hold(run_path(cfg.trainer.run_dir), enabled=jax.process_index() == 0), Preemption() as stop:
            return _train(cfg, data, programs, stop)
    except Exception as e:  # a full disk under any write (config.yaml, metrics, run.json): one line, not a traceback
        if is_disk_full(e) and not isinstance(e, DiskFull):
            raise from_os_error(e) from e
        raise


def _train(cfg: ExperimentConfig, data, programs, preemption: Preemption | None = None) -> dict:
    """Setup (mesh, programs, data, restore), the loop, and the summary: see _Run, _loop and _summary."""
    run = _Run.setup(cfg, data, programs)
    status, stopped = "running", None  # "done" only once the loop has finished: a crash never writes run.json
    result, full = {}, contextlib.nullcontext()
    try:
        _loop(run, preemption)
        status = "done"
    except TrainingPreempted as e:
        stopped = e
        raise
    except Exception as e:
        if is_disk_full(e):  # closing writes too, and would fail again: its error must stay the one reported
            full = contextlib.suppress(OSError, DiskFull)
        raise
    finally:
        try:
            with full:
                run.ckpt.close()  # waits for async saves, writes their manifests
            run.progress.close()
            result = _summary(run) if run.primary and status == "done" else {}
            if result:
                if run.evaluator.rows:  # before run.json: a finished run always has its rows
                    write_json(run.run_dir / EVAL_ROWS, {k: [float(x) for x in v] for k, v in run.evaluator.rows.items()})
                write_json(run.run_dir / "run.json", result)
            if run.primary and stopped is not None:  # after close: its checkpoint has committed
                write_json(run.run_dir / INTERRUPTED, {"status": "interrupted", "step": stopped.step,
                                                       "signal": stopped.signal_name, "at": time.time()})
        finally:
            with full:
                run.logger.close(summary=result)  # a finished run's numbers become its wandb summary
    return result


@dataclasses.dataclass
class _Run:
    """Everything one training run holds, built by `setup`; the loop advances `state` and `step_log`."""

    cfg: ExperimentConfig
    t_start: float
    primary: bool
    run_dir: Path
    mesh: Any
    programs: Any
    lr_by_step: Any
    train_it: Any
    tokenizer: Any
    ckpt: Any
    state: Any
    start_step: int
    counts: Any
    flops: Any
    peak: float
    peak_source: str
    logger: MetricsLogger
    progress: Progress
    to_global: Callable[[dict], dict]
    evaluator: _Evaluator
    step_log: _StepLog

    @property
    def total_steps(self) -> int:
        return self.cfg.total_steps

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.trainer.batch_size * self.cfg.data.seq_len

    def cumulative(self, step: int) -> dict:
        return _cumulative(self.flops, self.tokens_per_step, step)

    @classmethod
    def setup(cls, cfg: ExperimentConfig, data, make_programs=None) -> _Run:
        import jax

        from chinchax.model.counting import count_params, flops_per_token
        from chinchax.model.cudnn_segments import check_segments_fit
        from chinchax.sharding import make_mesh
        from chinchax.train import step as step_lib
        from chinchax.train.checkpoint import Checkpointer
        from chinchax.train.mfu import total_peak_flops
        from chinchax.train.optimizer import make_schedule, schedule_values
        from chinchax.train.programs import programs_for

        t_start = time.time()
        tc = cfg.trainer
        primary = jax.process_index() == 0
        run_dir = run_path(tc.run_dir)  # gs://... stays a URI (etils.epath), a local path becomes absolute
        old_steps = check_resume_compatible(run_dir, cfg)  # config.yaml is written once the restore agrees
        mesh = make_mesh(tc.mesh)
        _check_batch_splits(cfg, mesh)
        total_steps = cfg.total_steps
        programs = (make_programs or programs_for)(cfg, mesh)  # shared with earlier runs of this shape
        lr_by_step = schedule_values(make_schedule(cfg.optimizer, total_steps), total_steps)

        train_it, make_eval, tokenizer = (data or (lambda i, n: _default_data(cfg, i, n)))(
            jax.process_index(), jax.process_count()
        )
        ckpt = Checkpointer(run_dir / "checkpoints", max_to_keep=tc.max_to_keep)
        restored = ckpt.restore_latest(programs.abstract)
        if restored is not None:
            start_step, state, data_state = restored
            train_it.set_state(data_state)
            if primary:
                print(f"[chinchax train] resuming {run_dir} from step {start_step}", flush=True)
        else:
            start_step, state = 0, programs.init_state(cfg)
        try:
            if old_steps is not None:
                check_extension(run_dir, cfg, old_steps, start_step, lr_by_step)
            if start_step < total_steps:  # a full disk stops the run now, not after training to a save it cannot make
                ckpt.check_room(state)
        except UserError:
            ckpt.close()
            raise
        if primary:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", configlib.dump_yaml(cfg))
            (run_dir / INTERRUPTED).unlink(missing_ok=True)  # running again
            if start_step < total_steps:  # an extended run: its old summary no longer describes it
                for stale in ("run.json", EVAL_ROWS):
                    (run_dir / stale).unlink(missing_ok=True)

        flops = flops_per_token(cfg.model, cfg.data.seq_len, cfg.data.encoder_length)
        peak, peak_source = total_peak_flops(cfg.model.dtype, tc.peak_flops)
        wandb_run = start_run_wandb(cfg, run_dir) if primary else None
        logger = MetricsLogger(run_dir, resume_step=start_step, enabled=primary, wandb_run=wandb_run)
        progress = Progress(total=total_steps, initial=start_step, enabled=primary and tc.progress_bar)
        batch_sharding, stacked_sharding = step_lib.batch_sharding(mesh), step_lib.stacked_batch_sharding(mesh)

        max_segments = cfg.model.attention_max_segments
        # A causal decoder on a prefix objective (span corruption or prefix LM: Wang et al.'s causal-decoder
        # families) attends causally over the prefix too; the prefix only decides where the loss is taken.
        causal_decoder = cfg.model.variant == "decoder_only" and cfg.model.attention == "causal"

        def to_global(batch: dict, stacked: bool = False) -> dict:
            """A host batch -> global arrays; `stacked`: [steps, batch, ...] for a multi-step call."""
            if causal_decoder:
                batch = {k: v for k, v in batch.items() if k != "prefix_mask"}
            if max_segments:  # cuDNN's packed attention was compiled for this many documents per row
                for key in (k for k in batch if k.endswith("segment_ids")):
                    try:
                        check_segments_fit(batch[key], max_segments, key=key)
                    except ValueError as e:
                        raise UserError(str(e)) from None
            sharding = stacked_sharding if stacked else batch_sharding
            return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}

        evaluator = _Evaluator(programs, make_eval, to_global, cfg, tokenizer)
        tokens_per_step = tc.batch_size * cfg.data.seq_len
        step_log = _StepLog(cfg, run_dir, flops, tokens_per_step, peak, logger, progress)
        return cls(cfg, t_start, primary, run_dir, mesh, programs, lr_by_step, train_it, tokenizer, ckpt, state,
                   start_step, count_params(cfg.model), flops, peak, peak_source, logger, progress, to_global,
                   evaluator, step_log)


def _check_batch_splits(cfg: ExperimentConfig, mesh) -> None:
    tc = cfg.trainer
    data_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if (tc.batch_size // tc.microbatches) % data_shards:
        raise UserError(
            f"a microbatch of trainer.batch_size / trainer.microbatches = {tc.batch_size // tc.microbatches} rows "
            f"cannot be split over the {data_shards} data-parallel shards of trainer.mesh={list(mesh.shape.values())}; "
            "make it a multiple"
        )


def _cumulative(flops, tokens_per_step: int, step: int) -> dict:
    tokens = step * tokens_per_step
    return {
        "tokens": tokens,
        "flops_6nd": flops.six_n * tokens,
        "flops_6nd_non_embedding": flops.six_n_non_embedding * tokens,
        "flops_detailed": flops.detailed * tokens,
    }


def _loop(run: _Run, preemption: Preemption | None = None) -> None:
    """Steps start_step..total_steps, `trainer.steps_per_call` at a time where no checkpoint or eval falls
    inside a call (single steps elsewhere). The device is waited for only on checkpoint and eval steps: a
    call's metrics are fetched while the next call runs. When `preemption` says so after a call (a signal),
    the state at that call's end is saved and TrainingPreempted raised."""
    tc, total_steps = run.cfg.trainer, run.total_steps
    pending = None  # (first step number after the update, stacked or single device metrics, steps) of the last call
    update_fns = {}  # steps a call -> the compiled update (looked up once, not every step)
    step = run.start_step
    if preemption is not None:
        preemption.begin(step)
    while step < total_steps:
        n = _call_length(step, tc, total_steps)
        batches = [next(run.train_it) for _ in range(n)]
        if n == 1:
            batch, lr = run.to_global(batches[0]), run.lr_by_step[step]
        else:
            batch = run.to_global({k: np.stack([b[k] for b in batches]) for k in batches[0]}, stacked=True)
            lr = run.lr_by_step[step : step + n]
        if n not in update_fns:
            update_fns[n] = run.programs.train_step(batch.keys(), n)
        run.state, metrics = update_fns[n](run.state, batch, lr)
        if pending is not None:
            run.step_log.record_call(*pending)  # the last call's metrics while this one runs
        pending = (step + 1, metrics, n)
        step = done = step + n
        stop = preemption is not None and preemption.reached(done - n + 1, done) and done < total_steps
        save_now = stop or done == total_steps or (tc.checkpoint_every and done % tc.checkpoint_every == 0)
        eval_now = done == total_steps or (tc.eval_every and done % tc.eval_every == 0)
        if save_now or eval_now:
            run.step_log.record_call(*pending)  # synchronous here: never checkpoint a NaN state
            pending = None
        if eval_now:
            run.step_log.last_eval = run.evaluator(run.state["params"], done)
            if run.step_log.last_eval:
                run.logger.log(run.step_log.last_eval)
        if save_now:
            run.logger.flush()  # on gs:// the rows up to a checkpoint are stored before it can be trusted
            run.ckpt.save(done, run.state, run.train_it.get_state())
        if stop:
            raise TrainingPreempted(done, preemption.signal_name)
        run.ckpt.poll()  # a committed save gets its manifest at once (single host; several: at the next save)
    if pending is not None:
        run.step_log.record_call(*pending)
    if run.start_step >= total_steps:  # re-run of a finished run: recompute its summary, train nothing
        rows = [r for r in run.logger.rows() if "loss" in r]
        run.step_log.last_loss = rows[-1]["loss"] if rows else float("nan")
        run.step_log.last_eval = run.evaluator(run.state["params"], total_steps)


def _call_length(step: int, tc, total_steps: int) -> int:
    """Steps the call after `step` runs: `steps_per_call` when none of them but the last is a checkpoint or
    eval step (those need the state in between), else 1."""
    k = tc.steps_per_call
    if k == 1 or step + k > total_steps:
        return 1
    for every in (tc.checkpoint_every, tc.eval_every):
        if every and (step + k - 1) // every > step // every:
            return 1  # a multiple of `every` falls strictly inside (step, step + k)
    return k


def _summary(run: _Run) -> dict:
    """run.json of a finished run."""
    import jax

    final_step = int(jax.device_get(run.state["step"]))
    last_eval, mfu_values = run.step_log.last_eval, run.step_log.mfu_values
    return {
        "run": run.run_dir.name,
        "status": "done",
        "n_params": run.counts.total,
        "n_params_embedding": run.counts.embedding,
        "n_params_non_embedding": run.counts.non_embedding,
        "n_tokens": final_step * run.tokens_per_step,
        "steps": final_step,
        "batch_size": run.cfg.trainer.batch_size,
        "seq_len": run.cfg.data.seq_len,
        **{k: v for k, v in run.cumulative(final_step).items() if k != "tokens"},
        "final_train_loss": run.step_log.last_loss,
        "eval_loss": last_eval.get("eval_loss"),
        "eval_loss_stderr": last_eval.get("eval_loss_stderr"),
        "eval_bits_per_byte": last_eval.get("eval_bits_per_byte"),
        "wall_time_s": time.time() - run.t_start,
        "mfu": float(np.mean(mfu_values)) if mfu_values else None,
        "peak_flops": run.peak,
        "peak_flops_source": run.peak_source,
        "tokenizer_hash": getattr(run.tokenizer, "hash", None),
        "n_devices": jax.device_count(),
        "cpu_cores": len(os.sched_getaffinity(0)),  # XLA:CPU's threads: they set its float order (cpu_threads.py)
        "mesh": dict(run.mesh.shape),
        "config": configlib.to_dict(run.cfg),
    }


class _Evaluator:
    """The eval set's loss (and bits per byte for causal LMs) at a step; `rows` keeps the last eval's
    per-row loss sums and weights (paired comparisons of runs)."""

    def __init__(self, programs, make_eval, to_global, cfg: ExperimentConfig, tokenizer):
        from chinchax.train.evaluate import token_byte_lengths

        self.programs, self.make_eval, self.to_global = programs, make_eval, to_global
        self.byte_lengths = (
            token_byte_lengths(tokenizer) if tokenizer is not None and cfg.data.objective == "causal_lm" else None
        )
        self.batches: list | None = None
        self.eval_fn = None
        self.rows: dict = {}

    def __call__(self, params, step: int) -> dict:
        import jax

        from chinchax.train.evaluate import bits_per_byte, count_bytes, summarize

        if self.make_eval is None:
            return {}
        if self.batches is None:
            self.batches = self.make_eval()
        sums, weights, targets, tweights = [], [], [], []
        for batch in self.batches:
            gb = self.to_global(batch)
            if self.eval_fn is None:
                self.eval_fn = self.programs.eval_step(gb.keys())
            out = jax.tree.map(_to_host, self.eval_fn(params, gb))
            sums.append(out["loss_sum_B"])
            weights.append(out["weight_B"])
            targets.append(batch["targets"])
            tweights.append(batch["loss_weights"])
        loss_sums, w = np.concatenate(sums), np.concatenate(weights)
        self.rows.update(loss_sum=loss_sums, weight=w)
        mean, stderr = summarize(loss_sums, w)
        row = {"step": step, "eval_loss": mean, "eval_loss_stderr": stderr}
        # bytes are counted on this host's rows, then summed over hosts
        if self.byte_lengths is not None:
            n_bytes = float(_to_host(np.asarray([count_bytes(targets, tweights, self.byte_lengths)])).sum())
            row["eval_bits_per_byte"] = bits_per_byte(float(loss_sums.sum()), n_bytes)
        return row


class _StepLog:
    """A finished step's metrics: the divergence check, then every `log_every` steps a metrics row (step time,
    tokens/s and MFU averaged over the steps since the last row) and a progress update."""

    def __init__(self, cfg, run_dir, flops, tokens_per_step, peak, logger, progress):
        self.cfg, self.run_dir, self.flops, self.tokens_per_step, self.peak = cfg, run_dir, flops, tokens_per_step, peak
        self.logger, self.progress = logger, progress
        self.last_loss = float("nan")
        self.last_eval: dict = {}
        self.mfu_values: list[float] = []
        self.window_start, self.window_steps, self.first_window = time.perf_counter(), 0, True

    def record_call(self, first_step: int, metrics_dev, n_steps: int) -> None:
        """The metrics of one call: one step's, or `n_steps` stacked on a leading axis (one fetch)."""
        import jax

        host = jax.device_get(metrics_dev)
        if n_steps == 1:
            self.record(first_step, {k: float(v) for k, v in host.items()})
            return
        for i in range(n_steps):
            self.record(first_step + i, {k: float(v[i]) for k, v in host.items()})

    def record(self, step: int, m: dict) -> None:
        """A finished step's metrics, as host floats."""
        if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
            raise TrainingDiverged(
                f"the loss became {m['loss']} (grad norm {m['grad_norm']}) at step {step}; stopping. The last "
                f"good checkpoint is kept in {self.run_dir / 'checkpoints'}; lower optimizer.learning_rate, raise "
                "optimizer.warmup_steps or set optimizer.clip_norm, then start a new run_dir"
            )
        self.last_loss = m["loss"]
        self.window_steps += 1
        if step % self.cfg.trainer.log_every and step != self.cfg.total_steps:
            return
        now = time.perf_counter()
        step_time = (now - self.window_start) / self.window_steps
        tokens_per_s = self.tokens_per_step / step_time
        mfu = self.flops.detailed * tokens_per_s / self.peak
        if not self.first_window:  # the first window after a (re)start includes compilation
            self.mfu_values.append(mfu)
        self.logger.log(
            {
                "step": step,
                "loss": m["loss"],
                "learning_rate": m["learning_rate"],
                "grad_norm": m["grad_norm"],
                "z_loss": m["z_loss"],
                **_cumulative(self.flops, self.tokens_per_step, step),
                "step_time_s": step_time,
                "tokens_per_s": tokens_per_s,
                "mfu": mfu,
            }
        )
        self.progress.update(self.window_steps, m["loss"], tokens_per_s)
        self.window_start, self.window_steps, self.first_window = now, 0, False


def _to_host(a) -> np.ndarray:
    """A global array (possibly spread over hosts) or a local numpy array -> the whole of it, on every host."""
    import jax

    if jax.process_count() == 1:
        return np.asarray(a)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))
