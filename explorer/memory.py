"""Keeping a long-running server small on glibc (Linux): freed memory handed
back to the system instead of staying in the process (docs/explorer.md,
"Where the memory went"). Elsewhere the allocator is left alone.

    keep_memory_small()   # once, at start: capped arenas, big blocks on their own pages, a trim every 20 s
    trim_memory()         # now, e.g. after a projection
"""
from __future__ import annotations

import ctypes
import sys
import threading
import time

TRIM_SECONDS = 20  # how often the C heap's free pages are handed back to the system (glibc's malloc_trim)
ARENAS = 2  # glibc malloc arenas: one per thread by default, each keeping its freed memory
MMAP_BYTES = 512 * 2**10  # blocks this big or bigger get their own pages, returned to the system when freed

try:  # glibc, to give back the memory a request freed (Linux; elsewhere the allocator is left alone)
    LIBC = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None
except OSError:
    LIBC = None


def trim_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim):
    torch's and Gradio's request-sized buffers, freed, otherwise stay in the
    server's RSS, most of all after a projection's autograd buffers."""
    if LIBC is not None:
        LIBC.malloc_trim(0)


def keep_memory_small(every: float = TRIM_SECONDS) -> None:
    """Cap glibc's malloc arenas at ARENAS (the server's threads share them
    instead of keeping one each), give blocks of MMAP_BYTES or more their own
    pages (glibc otherwise raises that bar to the largest block freed, up to
    32 MiB, and a projection's buffers then stay in the heap), and trim the
    heap every ``every`` seconds in a daemon thread; nothing off glibc."""
    if LIBC is None:
        return
    LIBC.mallopt(-8, ARENAS)  # M_ARENA_MAX
    LIBC.mallopt(-3, MMAP_BYTES)  # M_MMAP_THRESHOLD; a fixed value also stops glibc moving it

    def run():
        while True:
            time.sleep(every)
            trim_memory()
    threading.Thread(target=run, name="trim-memory", daemon=True).start()

