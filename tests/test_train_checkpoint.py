"""Checkpointer: manifests, retention that never drops a good step for a damaged one, verified fallback."""

import contextlib
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from chinchax.train.checkpoint import MANIFEST, ORBAX_COMMITTED, Checkpointer, load_numpy_state, verify


def _state(step):
    return {
        "step": jnp.asarray(step, jnp.int32),
        "w": jnp.full((64, 32), float(step)),
        "b": jnp.arange(7.0) + step,
    }


def _abstract():
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), _state(0))


def _largest_file(step_dir: Path) -> Path:
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST]
    return max(files, key=lambda p: p.stat().st_size)


def _flip_bytes(path: Path):
    data = bytearray(path.read_bytes())
    for i in range(0, len(data), max(len(data) // 16, 1)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_saves_keep_max_to_keep_verified_steps_and_restore_exactly(tmp_path):
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), {"pos": step})
    ckpt.close()
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    assert ckpt.steps() == [2, 3]
    assert all(verify(tmp_path / str(s)) is None for s in (2, 3))
    step, state, data = ckpt.restore_latest(_abstract())
    assert step == 3 and data == {"pos": 3}
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(_state(3)["w"]))
    assert int(state["step"]) == 3


def test_damaged_step_detected_and_restore_falls_back(tmp_path, capsys):
    ckpt = Checkpointer(tmp_path, max_to_keep=3)
    for step in (2, 4):
        ckpt.save(step, _state(step), {"pos": step})
    ckpt.close()
    _flip_bytes(_largest_file(tmp_path / "4"))  # same size, different bytes: only the hash can tell
    assert verify(tmp_path / "4", full=False) is None and verify(tmp_path / "4") is not None
    ckpt = Checkpointer(tmp_path, max_to_keep=3)
    step, state, data = ckpt.restore_latest(_abstract())
    err = capsys.readouterr().err
    assert step == 2 and data == {"pos": 2}
    np.testing.assert_array_equal(np.asarray(state["b"]), np.arange(7.0) + 2)
    assert "checkpoint step 4 is damaged" in err and "falling back" in err
    assert ckpt.steps() == [2]  # moved aside, not deleted
    assert len(list((tmp_path / "damaged").iterdir())) == 1
    ckpt.save(4, _state(40), {"pos": 40})  # the same step number can be saved again after a fallback
    ckpt.close()
    assert verify(tmp_path / "4") is None


def test_good_step_is_not_deleted_in_favour_of_a_damaged_one(tmp_path, capsys):
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    for step in (1, 2):
        ckpt.save(step, _state(step), {"pos": step})
    ckpt.wait_until_finished()
    victim = _largest_file(tmp_path / "2")
    victim.write_bytes(victim.read_bytes()[:-10])  # truncated after its save finished
    ckpt.save(3, _state(3), {"pos": 3})
    ckpt.close()
    assert ckpt.steps() == [1, 2, 3]  # step 1 survives: step 2 no longer matches its manifest
    assert "no longer match" in capsys.readouterr().err
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    assert ckpt.restore_latest(_abstract())[0] == 3


def _killed_after_commit(tmp_path) -> None:
    """Steps 1 and 2 saved; the process dies once orbax has committed step 2, before our manifest of it."""
    ckpt = Checkpointer(tmp_path, max_to_keep=3)
    ckpt.save(1, _state(1), {"pos": 1})
    ckpt.save(2, _state(2), {"pos": 2})  # waits for step 1 and writes its manifest first
    ckpt._manager.wait_until_finished()  # orbax's commit of step 2 ...
    ckpt._manager.close()  # ... and nothing of ours after it, as with a kill -9 here
    assert (tmp_path / "2" / ORBAX_COMMITTED).is_file() and not (tmp_path / "2" / MANIFEST).exists()


def test_a_step_committed_by_orbax_without_our_manifest_is_restored(tmp_path, capsys):
    """The window between orbax's commit and the manifest (a kill -9 or SIGTERM there): the step is kept, not
    set aside as damaged, and gets its manifest, so damage from then on is detected as for any step."""
    _killed_after_commit(tmp_path)
    ckpt = Checkpointer(tmp_path, max_to_keep=3)
    step, state, data = ckpt.restore_latest(_abstract())
    assert step == 2 and data == {"pos": 2}
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(_state(2)["w"]))
    assert "committed by orbax but had no manifest" in capsys.readouterr().err
    assert verify(tmp_path / "2") is None and not (tmp_path / "damaged").exists()
    ckpt.close()
    _flip_bytes(_largest_file(tmp_path / "2"))
    assert Checkpointer(tmp_path, max_to_keep=3).restore_latest(_abstract())[0] == 1


def test_a_committed_step_without_manifest_that_orbax_cannot_read_is_set_aside(tmp_path, capsys):
    _killed_after_commit(tmp_path)
    victim = _largest_file(tmp_path / "2")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    ckpt = Checkpointer(tmp_path, max_to_keep=3)
    assert ckpt.restore_latest(_abstract())[0] == 1
    assert "checkpoint step 2 is damaged (orbax could not restore it" in capsys.readouterr().err
    assert ckpt.steps() == [1] and len(list((tmp_path / "damaged").iterdir())) == 1


def test_step_without_manifest_or_orbax_commit_marker_is_not_trusted(tmp_path, capsys):
    ckpt = Checkpointer(tmp_path, max_to_keep=3)
    ckpt.save(1, _state(1), {"pos": 1})
    ckpt.save(2, _state(2), {"pos": 2})
    ckpt.close()
    (tmp_path / "2" / MANIFEST).unlink()  # neither marker: nothing says the save of step 2 completed
    (tmp_path / "2" / ORBAX_COMMITTED).unlink()
    ckpt = Checkpointer(tmp_path, max_to_keep=3)
    assert ckpt.restore_latest(_abstract())[0] == 1
    assert "no manifest" in capsys.readouterr().err


def test_failed_background_save_gets_no_manifest(tmp_path, monkeypatch):
    import pytest

    ckpt = Checkpointer(tmp_path, max_to_keep=3)
    ckpt.save(1, _state(1), {"pos": 1})
    ckpt.wait_until_finished()
    ckpt.save(2, _state(2), {"pos": 2})
    # orbax's wait_until_finished does not raise for a save that failed in the background (seen on gs:// with
    # tensorstore errors): it logs and drops the step from all_steps(). Simulate that outcome for step 2.
    monkeypatch.setattr(ckpt._manager, "all_steps", lambda: [1])
    with pytest.raises(RuntimeError, match=r"step \[2\] failed"):
        ckpt.wait_until_finished()
    assert (tmp_path / "1" / MANIFEST).is_file() and not (tmp_path / "2" / MANIFEST).exists()


def test_no_good_step_means_start_from_scratch(tmp_path):
    assert Checkpointer(tmp_path, max_to_keep=1).restore_latest(_abstract()) is None


def test_every_step_damaged_says_training_restarts_from_zero(tmp_path, capsys):
    ckpt = Checkpointer(tmp_path, max_to_keep=3)
    for step in (2, 4):
        ckpt.save(step, _state(step), {"pos": step})
    ckpt.close()
    for step in (2, 4):
        _flip_bytes(_largest_file(tmp_path / str(step)))
    ckpt = Checkpointer(tmp_path, max_to_keep=3)
    assert ckpt.restore_latest(_abstract()) is None
    err = capsys.readouterr().err
    assert "checkpoint step 4 is damaged" in err and "falling back to the previous step" in err
    assert "checkpoint step 2 is damaged" in err and "no earlier step is left" in err
    assert "every checkpoint of this run is damaged (steps [2, 4]" in err and "restarts from step 0" in err
    assert ckpt.steps() == []
    ckpt.close()


def test_read_only_restore_skips_a_damaged_step_and_changes_nothing(tmp_path, capsys):
    """Evaluation's mode: the newest good step is restored (train state only), a damaged one is skipped but left
    where it is (a run may still be writing it), nothing is created and nothing can be saved."""
    import pytest

    from chinchax.train.checkpoint import DAMAGED_DIR

    ckpt = Checkpointer(tmp_path / "ckpt", max_to_keep=3)
    for step in (2, 4):
        ckpt.save(step, _state(step), {"pos": step})
    ckpt.close()
    _flip_bytes(_largest_file(tmp_path / "ckpt" / "4"))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with _absl_warnings() as warned:
        reader = Checkpointer(tmp_path / "ckpt", read_only=True)
        on_host = load_numpy_state(tmp_path / "ckpt" / "2")
    assert warned == []  # read-only is what evaluation asks for: orbax's "directory is read only" is noise
    np.testing.assert_array_equal(on_host["w"], np.asarray(_state(2)["w"]))
    step, state, data = reader.restore_latest(_abstract(), with_data=False)
    assert step == 2 and data is None
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(_state(2)["w"]))
    assert "skipping checkpoint step 4" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="read-only"):
        reader.save(6, _state(6), {"pos": 6})
    reader.close()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (tmp_path / "ckpt" / DAMAGED_DIR).exists()
    assert Checkpointer(tmp_path / "nowhere", read_only=True).restore_latest(_abstract()) is None
    assert not (tmp_path / "nowhere").exists()


@contextlib.contextmanager
def _absl_warnings():
    """The messages of absl warnings (what orbax logs) emitted in the block."""
    from absl import logging as absl_logging

    seen = []

    class Catch(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                seen.append(record.getMessage())

    handler = Catch()
    absl_logger = absl_logging.get_absl_logger()
    absl_logger.addHandler(handler)
    try:
        yield seen
    finally:
        absl_logger.removeHandler(handler)
