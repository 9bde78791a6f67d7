"""Long-lived training workers: one process trains many runs, so a sweep pays process start-up and XLA
compilation once per shape instead of once per run (chinchax.train.programs shares the compiled steps).

Each run is exactly `chinchax train CONFIG`: the worker calls the same CLI entry point in-process, with
its stdout and stderr sent to the run's log, and answers with the exit code the command would have had.
The executors' contracts hold unchanged (run dirs, run.json, resume, skip, retry): only the process that
trains is long-lived. A worker that dies (a crash, the OOM killer, kill -9) reports the death as the
run's failure; the next run gets a fresh worker. SIGTERM or SIGINT reaches the trainer running in it: the run
saves, answers exit code 75 (interrupted, resumed by the next sweep run), and the worker then exits, as the
signal asked; the next run gets a fresh worker.

Protocol, one JSON object a line: the driver writes {"config": PATH, "log": PATH} to the worker's stdin;
the worker answers {"returncode": N} on the file descriptor it was started with as stdout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from chinchax.train.preemption import PREEMPTED_EXIT_CODE  # no jax imported: the driver stays light

WORKER_COMMAND = (sys.executable, "-m", "chinchax.scaling.worker")


def train_in_process(config: str) -> int:
    """`chinchax train CONFIG` in this process; the exit code it would have had (tracebacks printed)."""
    from chinchax.cli import main

    try:
        return main(["train", config])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - a bad run must not take the worker (and its cache) down
        traceback.print_exc()
        return 1


def serve() -> None:
    """The worker's loop: requests on stdin, answers on the original stdout, each run's output to its log."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray output between runs must not reach the answer channel
    _exit_with_parent()
    for line in sys.stdin:
        request = json.loads(line)
        config = request["config"]
        if not _can_train(config):  # started JAX on another core count: a fresh worker trains it
            answers.write(json.dumps({"restart": True}) + "\n")
            return
        with open(request["log"], "a") as log:
            returncode = _with_output_to(log.fileno(), lambda: train_in_process(config))  # noqa: B023 (called now)
        answers.write(json.dumps({"returncode": returncode}) + "\n")
        if returncode == PREEMPTED_EXIT_CODE:  # the signal was this process's too: stop after answering
            return


def _can_train(config: str) -> bool:
    """Whether this worker's thread pool suits the run's trainer.cpu_threads (chinchax.train.cpu_threads)."""
    from chinchax.configlib import read_yaml
    from chinchax.errors import UserError
    from chinchax.train import cpu_threads

    try:
        threads = (read_yaml(config).get("trainer") or {}).get("cpu_threads")
    except (UserError, AttributeError):
        return True  # a bad config: let the trainer say what is wrong with it
    return cpu_threads.compatible(threads if isinstance(threads, int) else None)


def _exit_with_parent(poll_s: float = 1.0, grace_s: float = 120.0) -> None:
    """End this worker when its driver dies (a killed sweep must leave no trainer behind: the run resumes
    from its checkpoints next time). Between runs the closed stdin says so; during one, a watcher thread
    sees the worker re-parented and sends the worker SIGTERM, so the run saves at its next step and stops
    as a preempted one would (exit 75); a run that has not stopped after `grace_s` is ended there."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _with_output_to(fd: int, fn):
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        return fn()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


class Worker:
    """The driver's handle on one worker process, started on first use and again after it dies."""

    def __init__(self, env: dict | None = None, command=WORKER_COMMAND):
        self.env = {**os.environ, **(env or {})}
        self.command = list(command)
        self.process: subprocess.Popen | None = None

    def run(self, config: str, log: Path) -> int:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env=self.env, text=True, bufsize=1,
            )
        try:
            self.process.stdin.write(json.dumps({"config": str(config), "log": str(log)}) + "\n")
            self.process.stdin.flush()
            answer = self.process.stdout.readline()
        except BrokenPipeError:
            answer = ""
        if answer and json.loads(answer).get("restart"):  # the run needs a fresh process (its core count)
            self.process.wait()
            self.process = None
            return self.run(config, log)
        if answer:
            return int(json.loads(answer)["returncode"])
        returncode = self.process.wait()  # it died: report how, as a subprocess's exit code would
        with open(log, "a") as f:
            f.write(f"\n[chinchax worker] the worker process died (exit code {returncode}) during this run\n")
        self.process = None
        return returncode if returncode != 0 else 1

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class WorkerPool:
    """`size` workers; `run` borrows a free one (callers are the local executor's threads)."""

    def __init__(self, size: int, env: dict | None = None, command=WORKER_COMMAND):
        self._free = [Worker(env, command) for _ in range(size)]
        self._all = list(self._free)
        self._lock = threading.Condition()

    def run(self, config: str, log: Path) -> int:
        with self._lock:
            while not self._free:
                self._lock.wait()
            worker = self._free.pop()
        try:
            return worker.run(config, log)
        finally:
            with self._lock:
                self._free.append(worker)
                self._lock.notify()

    def close(self) -> None:
        for worker in self._all:
            worker.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    from chinchax.hostenv import reexec_with_hugepage_malloc

    reexec_with_hugepage_malloc()
    serve()
