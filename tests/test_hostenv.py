"""The huge-page malloc setting: added once, other tunables kept, opt-out honoured, and set by re-exec."""

import os
import subprocess
import sys

import pytest

from chinchax.hostenv import HUGEPAGE_TUNABLE, with_hugepage_malloc

SHOW = "from chinchax.hostenv import reexec_with_hugepage_malloc as r; import os; r(); print(os.environ.get('GLIBC_TUNABLES', '-'))"


def test_the_tunable_is_added_once_and_others_are_kept():
    assert with_hugepage_malloc("") == HUGEPAGE_TUNABLE
    assert with_hugepage_malloc("glibc.malloc.arena_max=2") == f"glibc.malloc.arena_max=2:{HUGEPAGE_TUNABLE}"
    assert with_hugepage_malloc(f"a=1:{HUGEPAGE_TUNABLE}") == f"a=1:{HUGEPAGE_TUNABLE}"


def run_show(**env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "CHINCHAX_HUGEPAGE_MALLOC")}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables are Linux-only")
def test_a_process_re_executes_itself_with_the_tunable_and_keeps_its_own():
    assert run_show() == HUGEPAGE_TUNABLE
    assert run_show(GLIBC_TUNABLES="glibc.malloc.arena_max=2") == f"glibc.malloc.arena_max=2:{HUGEPAGE_TUNABLE}"
    assert run_show(CHINCHAX_HUGEPAGE_MALLOC="0") == "-"
