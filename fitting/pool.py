"""Independent calls spread over processes, the calling process being one of them.

``run_parallel(fn, items, workers)`` gives ``[fn(item) for item in items]``: ``workers - 1``
spawned processes (spawned, not forked: polars' thread pool is not fork-safe) and this
process take the items one at a time, the next free one the next item, so a spawned process
is started (and imports the fitting code) only where it helps, and this process, which would
otherwise wait, works too. Each item's result is what ``fn(item)`` gives in any process (the
fits are deterministic, and computed per item), so the results are those of a loop.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Callable, Sequence

_tuned = False


def tune_allocator() -> None:
    """Keep the fits' arrays on the heap (glibc malloc; elsewhere nothing is done).

    The optimiser allocates and frees arrays of 0.1-10 MB (a batch's rows and Jacobian) tens of
    thousands of times. With glibc's defaults many of them are mapped fresh (and their pages
    faulted in and zeroed by the kernel) each time, and freed memory at the top of the heap is
    handed back and faulted in again: about an eighth of a backtest's CPU. Serving arrays up
    to 32 MB from the heap and keeping up to 256 MB of freed memory for the next iteration
    removes most of that. Where it is memory goes, not what is computed: the numbers are the
    same (tested on the backtest's fits). Called by the fitting commands and their worker
    processes; left alone when the environment sets any ``MALLOC_*`` tunable itself."""
    global _tuned
    if _tuned or any(name.startswith("MALLOC_") for name in os.environ):
        return
    _tuned = True
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows): nothing to tune
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    mallopt(m_mmap_threshold, 32 * 2**20)
    mallopt(m_trim_threshold, 256 * 2**20)


def run_parallel(fn: Callable[[Any], Any], items: Sequence[Any], workers: int,
                 done: Callable[[int], None] | None = None) -> list[Any]:
    """``[fn(item) for item in items]`` in ``workers`` processes in all (this one included);
    ``done(i)`` is called in this process as item i finishes (in the order they finish).
    ``fn`` must be picklable (a module-level function); an exception in any call is raised here."""
    done = done or (lambda _i: None)
    if workers <= 1 or len(items) <= 1:
        out = []
        for i, item in enumerate(items):
            out.append(fn(item))
            done(i)
        return out
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    results: list[Any] = [None] * len(items)
    lock, following, failed = threading.Lock(), iter(range(len(items))), threading.Event()
    finished: queue.Queue = queue.Queue()  # (i, future) of the items the spawned processes ran

    def take() -> int | None:
        with lock:
            return None if failed.is_set() else next(following, None)

    spawned = min(workers - 1, len(items) - 1)
    with ProcessPoolExecutor(max_workers=spawned, mp_context=get_context("spawn"), initializer=tune_allocator) as pool:
        slots = threading.Semaphore(spawned)  # one item in flight per spawned process

        def feed() -> None:
            while True:
                slots.acquire()
                i = take()
                if i is None:
                    slots.release()
                    return
                fut = pool.submit(fn, items[i])
                fut.add_done_callback(lambda f, i=i: (finished.put((i, f)), slots.release()))

        feeder = threading.Thread(target=feed, name="run_parallel-feed", daemon=True)
        feeder.start()
        n_done = 0

        def collect(block: bool) -> None:
            nonlocal n_done
            while True:
                try:
                    i, fut = finished.get(block=block)
                except queue.Empty:
                    return
                results[i] = fut.result()  # raises the worker's exception here
                n_done += 1
                done(i)
                if block:
                    return

        try:
            while (i := take()) is not None:
                results[i] = fn(items[i])
                n_done += 1
                done(i)
                collect(block=False)
            feeder.join()
            while n_done < len(items):
                collect(block=True)
        except BaseException:
            failed.set()
            raise
    return results
