"""Test doubles for the trainer: a data source that fails after a given number of batches (a crash
mid-run, for resume tests)."""


def data_failing_after(cfg, n_batches: int, error: Exception):
    """A `train(cfg, data=...)` factory: the real pipeline, raising `error` when batch n_batches + 1 is
    asked for (its state still checkpoints and restores, so a resume continues the real stream)."""
    from chinchax.train.trainer import _default_data

    def data(i, n):
        it, make_eval, tok = _default_data(cfg, i, n)

        class Failing:
            served = 0

            def __next__(self):
                if self.served == n_batches:
                    raise error
                self.served += 1
                return next(it)

            def get_state(self):
                return it.get_state()

            def set_state(self, state):
                it.set_state(state)

        return Failing(), make_eval, tok

    return data
