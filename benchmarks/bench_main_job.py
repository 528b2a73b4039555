"""The main job, end to end: ``emergence fit``, ``backtest`` and ``report`` on a results folder,
each as a subprocess, timed by wall clock and by the CPU seconds of the child (its rusage,
workers included), with the load average beside (the machine may be shared: CPU seconds are
what compares across runs).

    OMP_NUM_THREADS=1 python benchmarks/bench_main_job.py [datasets_cache/microladder]
        [--n-boot 200] [--workers 2] [--fit-workers N] [--stages fit,backtest,report] [--code DIR]

The three commands are the demo's (``scripts/demo.sh``): ``fit --workers 2``, ``backtest`` and
``report`` with ``--n-boot 200 --workers 2``. ``fit`` stores each task's ground truth in the
cache, and ``backtest`` and ``report`` read it there.

Every run gets a fresh, empty backtest cache (``EMERGENCE_CACHE_DIR``, fitting.backtest_cache), as
in a fresh clone: ``backtest`` fills it and ``report`` reuses it; ``--cache DIR`` uses DIR instead
(a second run with the same DIR shows the warm-cache times).

``--code DIR`` runs another checkout's code (``PYTHONPATH=DIR``, e.g. the code before a change,
``git archive HEAD | tar -x -C /tmp/base``), with this interpreter.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAUNCH = "import sys; from emergence.cli import main; sys.exit(main())"


def run_stage(name: str, args: list[str], env: dict[str, str], cwd: str) -> tuple[float, float, int]:
    """(wall s, CPU s of the child and its children, exit code)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", LAUNCH, *args], env=env, cwd=cwd,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode:
        print(proc.stderr[-2000:], file=sys.stderr)
    else:  # the CLI's own one-line stage summaries, when it prints them
        for line in proc.stderr.splitlines():
            if " in " in line and "CPU" in line:
                print(f"    [{name}] {line.strip()}")
    return wall, cpu, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default="datasets_cache/microladder")
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fit-workers", type=int, default=None,
                        help="fit's --workers (default: --workers; 0: leave the option out, for code before it had one)")
    parser.add_argument("--stages", default="fit,backtest,report")
    parser.add_argument("--code", default=None, help="checkout whose code to run (PYTHONPATH)")
    parser.add_argument("--cache", default=None, help="backtest cache folder (default: a fresh empty one)")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    code = Path(args.code).resolve() if args.code else repo
    folder = str(Path(args.folder).resolve())
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(code),
               EMERGENCE_CACHE_DIR=args.cache or tempfile.mkdtemp(prefix="bench_cache_"))
    out = tempfile.mkdtemp(prefix="bench_report_")
    fit_workers = args.workers if args.fit_workers is None else args.fit_workers
    stages = {
        "fit": ["fit", folder, "--json", *(["--workers", str(fit_workers)] if fit_workers else [])],
        "backtest": ["backtest", folder, "--n-boot", str(args.n_boot), "--workers", str(args.workers), "--json"],
        "report": ["report", folder, "--out", out, "--n-boot", str(args.n_boot), "--workers", str(args.workers)],
    }
    print(f"code: {code}   folder: {folder}   n_boot={args.n_boot} workers={args.workers} fit workers={fit_workers}   "
          f"cache: {env['EMERGENCE_CACHE_DIR']}   cores: {os.cpu_count()}")
    total_wall = total_cpu = 0.0
    for name in args.stages.split(","):
        load = os.getloadavg()
        wall, cpu, rc = run_stage(name, stages[name], env, str(code))
        total_wall, total_cpu = total_wall + wall, total_cpu + cpu
        print(f"{name:9s} wall {wall:7.1f} s   CPU {cpu:7.1f} s   rc {rc}   "
              f"load before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after {os.getloadavg()[0]:.2f}", flush=True)
    print(f"{'total':9s} wall {total_wall:7.1f} s   CPU {total_cpu:7.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
