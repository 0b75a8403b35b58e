"""Process-wide runtime settings for long-running inference (opt-in; nothing here runs at import).

:func:`tune_allocator` — glibc's ``malloc`` serves every block above its *mmap threshold* (at most 32 MB
by default) with a fresh ``mmap`` and unmaps it on ``free``: each of the 37–50 MB activations of a ViT-B
encoder (and the reference's 805 MB attention scores) is then page-faulted in again on every image. Raising
the thresholds keeps those blocks on the heap, reused from one image to the next. Measured on the 2-core
development VM, float32 ViT-B encoder at 1024², three calls per process, three processes each: promptseg
5.2–5.8 s with it vs 5.9–6.5 s without (page faults 1.7–1.9 M → 0.36 M), the reference
``segment-anything`` 6.7–7.9 s vs 11.5–12.2 s. The price: freed memory stays with the process (its resident
size keeps its peak) — right for a batch job or a server that handles image after image, not for a
short-lived tool that should shrink between tasks. Reuse is not complete: PyTorch allocates with
``posix_memalign``, and a freed block is sometimes just too small for the next request of the same size.

``promptseg amg`` applies it in every worker (``--no-tune-allocator`` to opt out); ``benchmarks/bench_sam.py
--tune-allocator`` measures both implementations with it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Optional

# mallopt parameter numbers (glibc's <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1

_applied: Optional[tuple] = None


def tune_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = _INT_MAX) -> bool:
    """Keep blocks below ``mmap_threshold`` bytes on the heap and freed memory below ``trim_threshold``
    in the process (glibc ``mallopt``). Returns True when applied, False where the C library is not glibc
    (macOS, Windows, musl): then nothing changes. Safe to call more than once.
    """
    global _applied
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int (bytes), got {type(value).__name__}")
        if not 0 < value <= _INT_MAX:
            raise ValueError(f"{name} must be in [1, {_INT_MAX}] bytes, got {value}")
    if _applied == (mmap_threshold, trim_threshold):
        return True
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    if ok:
        _applied = (mmap_threshold, trim_threshold)
    return ok


def _glibc_mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: different allocator knobs
            return None
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt
