"""glibc's heap, kept for reuse: freed tensors stay with the process instead of going back to
the OS, so the next step's tensors of the same sizes do not fault their pages in again.

By default glibc serves a block of more than 32 MB (the dynamic threshold's ceiling) with its
own mmap and unmaps it when freed, and trims freed heap at the top beyond 128 kB: a step of a
two-layer model with an MLP at 20 seeds allocates and frees tensors of ~45 MB each time, and
faulting their pages back in (~45,000 page faults a step) was about half its time
(benchmarks/heap.py). The cost: blocks up to KEEP come from the heap, whose freed memory stays
with the process until it exits (its top is trimmed only beyond KEEP), so a process holds about
its peak. The setting is the whole process's: `Trainer` and `analyze` make it, so a library user's
process that trains or analyses has it too.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # mallopt's parameters (malloc.h)
KEEP = 1 << 30  # bytes: blocks up to this size come from the heap; its top is trimmed beyond it
# the heap grows by this beyond a request (count path: ~950 page faults a step at S = 64 before)
TOP_PAD = 64 << 20


def keep_freed_memory() -> None:
    """Set glibc's malloc to keep freed memory (KEEP, TOP_PAD) in this process; numbers do not
    change (torch aligns its buffers itself). A no-op without glibc; idempotent."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    for param, value in ((M_MMAP_THRESHOLD, KEEP), (M_TRIM_THRESHOLD, KEEP),
                         (M_TOP_PAD, TOP_PAD)):
        mallopt(param, value)
