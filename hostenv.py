"""Settings the process needs from its very start: glibc's malloc on transparent huge pages.

XLA:CPU allocates each step's temporaries afresh (gigabytes for a training step); glibc serves blocks
that big with mmap and hands them back at free, so every step page-faults them in again, 4 KiB at a time:
about 400,000 faults per step of the CPU train-step benchmark. With `glibc.malloc.hugetlb=1` (glibc
2.35 and newer; ignored elsewhere) malloc asks for 2 MiB transparent huge pages instead, and that step
ran in 5.1 s instead of 6.3 s (docs/benchmarks.md). glibc reads its tunables only when a process
starts, so `chinchax` re-executes itself once with the variable set; child processes inherit it.
Set CHINCHAX_HUGEPAGE_MALLOC=0 to opt out.
"""

from __future__ import annotations

import os
import sys

HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"


def with_hugepage_malloc(tunables: str) -> str:
    """GLIBC_TUNABLES with the huge-page setting added (other tunables kept)."""
    if HUGEPAGE_TUNABLE in tunables.split(":"):
        return tunables
    return f"{tunables}:{HUGEPAGE_TUNABLE}" if tunables else HUGEPAGE_TUNABLE


def reexec_with_hugepage_malloc() -> None:
    """Re-execute this process with the huge-page malloc tunable, unless it is set or opted out of."""
    if not sys.platform.startswith("linux") or os.environ.get("CHINCHAX_HUGEPAGE_MALLOC", "1") == "0":
        return
    current = os.environ.get("GLIBC_TUNABLES", "")
    wanted = with_hugepage_malloc(current)
    if wanted == current:
        return
    os.environ["GLIBC_TUNABLES"] = wanted
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
