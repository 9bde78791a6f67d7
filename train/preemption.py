"""Stopping on a signal without losing work: SIGTERM (how Cloud TPU and spot VMs, Slurm and Kubernetes stop a job,
with a short grace period) or SIGINT (Ctrl-C) makes the trainer finish the call it is in, save a checkpoint at
that step boundary, wait for the save to commit, write `interrupted.json` and exit with PREEMPTED_EXIT_CODE.
Running the same command again resumes from that step (docs/training.md, "Preemption").

One host: our own handlers set a flag that the loop reads after every call.

Several hosts: each host may get the signal at a different step, or only one host gets it, and a checkpoint
is a collective, so they must agree on the step. JAX has the protocol (MaxText and orbax's
`CheckpointManager.reached_preemption` use it): `jax.distributed.initialize` installs a SIGTERM handler that
reports the notice to the coordination service, which takes the furthest host's last reported step + 1, and
`multihost_utils.reached_preemption_sync_point(step)` is True on every host when it reaches that step. So
SIGTERM is left to JAX's handler (one of ours would replace it), a SIGINT is turned into a SIGTERM to
ourselves to take the same road, and the loop reports every step number (the protocol compares for equality,
and orbax's save reports its step too): all of a call's steps at the call's end, so that with
`steps_per_call` > 1 the hosts stop at the end of the call that holds the agreed step.

A second signal while the first is being handled stops at once, as if no handler were installed (the
newest committed checkpoint is kept: train/checkpoint.py).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

# EX_TEMPFAIL of sysexits.h: "a temporary failure; the user is invited to retry". The sweep executors read it
# as "resume later", not as a failure.
PREEMPTED_EXIT_CODE = 75


class TrainingPreempted(RuntimeError):
    """A signal stopped the run after it saved a checkpoint at `step`; running it again resumes there."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(
            f"stopped by {signal_name} at step {step}, after saving a checkpoint there; run the same command "
            "again to resume"
        )
        self.step, self.signal_name = step, signal_name


class Preemption:
    """While the block runs, SIGTERM and SIGINT ask the loop to stop: `begin(start_step)` before the first call,
    then `reached(first, last)` after each call (its steps) says whether to stop there, the same on every host."""

    def __init__(self):
        import jax

        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        if jax.process_count() == 1:
            self._sync, self._signals = False, (signal.SIGINT, signal.SIGTERM)
        elif jax.config.jax_enable_preemption_service:
            self._sync, self._signals = True, (signal.SIGINT,)  # SIGTERM is JAX's
        else:  # nothing can make the hosts agree: signals stop the run as they always did
            self._sync, self._signals = False, ()
            print("[chinchax train] jax_enable_preemption_service is off: a signal stops this multi-host run "
                  "without saving", file=sys.stderr, flush=True)

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for signum in self._signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:  # asked twice: stop now
            self.__exit__()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signal_name = name
        print(f"[chinchax train] {name}: saving a checkpoint after this step, then stopping (send it again to "
              "stop at once)", file=sys.stderr, flush=True)
        if self._sync and signum == signal.SIGINT:
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's handler tells every host

    def begin(self, start_step: int) -> None:
        """Several hosts: report the step every host starts from (a notice that comes before any report could
        not be agreed on)."""
        if self._sync:
            self._sync_point(start_step)

    def reached(self, first_step: int, last_step: int) -> bool:
        """After the call that trained steps first_step..last_step, on every host: stop at its end?"""
        if not self._sync:
            return self.signal_name is not None
        hits = [self._sync_point(step) for step in range(first_step, last_step + 1)]  # every step, in order
        if any(hits) and self.signal_name is None:
            self.signal_name = "SIGTERM"  # JAX's handler got it, here or on another host
        return any(hits)

    @staticmethod
    def _sync_point(step: int) -> bool:
        from jax.experimental import multihost_utils

        return multihost_utils.reached_preemption_sync_point(step)
