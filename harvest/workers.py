"""Jobs in spawned worker processes, one per GPU (or per core on a CPU): the process pool the
local executor's ``--gpus``/``--workers``, ``harvest eval``'s workers and the FSDP ranks of
:mod:`harvest.distributed` share.

Workers are spawned, never forked (a fork would copy CUDA state and locks); worker ``i`` gets
its ``CUDA_VISIBLE_DEVICES`` before it imports torch; each dies with the driver
(``PR_SET_PDEATHSIG`` on Linux); the first error or a worker's death stops the others and is
raised in the driver, a user error as itself (one line), a bug as one line with its traceback
printed by the worker.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from emergence.errors import EmergenceError, SpecError


class WorkerError(EmergenceError):
    """A worker process that died, or failed with something other than a user error."""


def gpu_devices(n: int) -> list[str]:
    """The first ``n`` visible GPUs, as ``CUDA_VISIBLE_DEVICES`` values for one worker each."""
    import torch

    count = torch.cuda.device_count()
    if n > count:
        raise SpecError(f"--gpus {n}: only {count} CUDA device(s) visible on this machine")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(count)]
    return ids[:n]


def run_workers(jobs: list[tuple[Callable, tuple]], devices: list[str | None],
                done: Callable[[str], None] = lambda key: None) -> list[Any]:
    """Each job ``(fn, args)`` in its own spawned process, ``fn(*args, done)`` (``done(key)``
    reports a finished unit to ``done`` here); ``devices[i]`` is job ``i``'s
    ``CUDA_VISIBLE_DEVICES`` (None: left as it is). Returns each job's result. The first error,
    or a worker's death, stops the others and is raised here; what they finished is kept."""
    import multiprocessing
    import pickle

    ctx = multiprocessing.get_context("spawn")  # a fork would copy CUDA state and locks
    queue = ctx.Queue()
    threads = None if any(devices) or os.environ.get("OMP_NUM_THREADS") else max(1, (os.cpu_count() or 1) // len(jobs))
    processes = []
    try:
        for i, (job, device) in enumerate(zip(jobs, devices)):
            process = ctx.Process(target=_worker, args=(i, device, threads, pickle.dumps(job), queue, os.getpid()),
                                  name=f"harvest-worker-{i}")
            process.start()
            processes.append(process)
        return _collect(queue, processes, done)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join()


def _collect(queue, processes, done: Callable[[str], None]) -> list[Any]:
    import queue as queues

    results: dict[int, Any] = {}
    silent: set[int] = set()  # exited without a word at the last look: dead if still silent
    while len(results) < len(processes):
        try:
            kind, i, value = queue.get(timeout=1.0)
        except queues.Empty:
            dead = {i for i, p in enumerate(processes) if i not in results and p.exitcode is not None}
            for i in sorted(dead & silent):
                raise WorkerError(f"worker {i} exited with code {processes[i].exitcode} before finishing; "
                                 "what it finished is kept: rerun to resume")
            silent = dead
            continue
        if kind == "unit":
            done(value)
        elif kind == "done":
            results[i] = value
        else:
            raise value if isinstance(value, EmergenceError) else WorkerError(f"worker {i}: {value}")
    return [results[i] for i in range(len(processes))]


def _worker(index: int, device: str | None, threads: int | None, payload: bytes, queue, parent: int) -> None:
    """A worker process: its GPU chosen before torch is imported, then its job run."""
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    _die_with_parent(parent)
    try:
        import pickle

        fn, args = pickle.loads(payload)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        queue.put(("done", index, fn(*args, lambda key: queue.put(("unit", index, key)))))
    except BaseException as err:  # sent to the driver, which stops the others and reports it
        queue.put(("error", index, _sendable(err)))


def _sendable(err: BaseException) -> EmergenceError | str:
    """A user error as itself (the driver prints it in one line); a bug as one line, its
    traceback printed here (on the driver's stderr) as the CLI keeps a bug's traceback."""
    import pickle
    import traceback

    if isinstance(err, EmergenceError):
        try:
            pickle.dumps(err)
            return err
        except Exception:  # noqa: BLE001 - sent as text instead
            pass
    else:
        traceback.print_exc()
    return error_line(err)


def error_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines() or [""]
    if isinstance(err, EmergenceError):
        return lines[0][:500]
    return f"{type(err).__name__}: {lines[-1][:500]}" if lines[-1] else type(err).__name__


def _die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGKILL when the driver dies (a killed sweep leaves no workers)."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the driver died before the call
        os._exit(1)
