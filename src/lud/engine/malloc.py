"""glibc malloc settings for a training process: keep freed CPU memory for the next tensor.

PyTorch's CPU tensors come from ``malloc``. With glibc's defaults a freed block of a few MB or
more is handed back to the kernel (unmapped, or trimmed off the top of the heap), so the next
tensor of that size page-faults all its pages in again — a cost paid on every call of a loss that
allocates dozens of 10⁶-entry buffers, and one that varies with how busy the host is. Raising the
mmap threshold to its maximum (32 MiB on 64-bit) and the trim threshold to 1 GiB keeps freed blocks
in the process for reuse. Both must be raised: the trim threshold alone turns off glibc's dynamic
mmap threshold, and every large tensor is then mapped afresh. Measured on the 2-core AMD EPYC
VM, 2 threads: ``benchmarks/lud_parts.py`` (LUD at B=256, C=1000, forward+backward) 118 ms with
glibc's defaults, 103 ms with both thresholds, 358 ms with the trim threshold alone, 122 ms with
the mmap threshold alone (the ``MALLOC_*`` variables); ``benchmarks/loss_speed.py
--keep-freed-memory``: eager LUD 95.5–99.8 ms against 115–140 ms without, a resnet8x4 training
step 231 against 264–278 ms. Values are unchanged (only where memory comes from); the process
keeps up to ~1 GiB of freed memory instead of returning it.

``mallopt`` changes the whole process, so the loss library never calls this: the trainer does
(``runtime.keep_freed_memory``, on by default), and a script of one's own can.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest accepted value on 64-bit (HEAP_MAX_SIZE / 2)
_TRIM_THRESHOLD = 2**30
# A user's own MALLOC_* settings (or another allocator preloaded) win over ours.
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring); True if they were set.

    False (and nothing changed) off Linux, without glibc, or when the environment already sets
    the allocator (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``,
    ``LD_PRELOAD``). Idempotent: later calls return the first call's answer.
    """
    if not sys.platform.startswith("linux") or any(os.environ.get(k) for k in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mmap first: setting the trim threshold alone would freeze the mmap threshold low
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
