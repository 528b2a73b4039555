"""Outputs are all old or all new: killed writers, concurrent writers, the user's umask.

The kill tests run the real CLI in a child process whose writer pauses at a chosen point (a
patched ``pyarrow.parquet.write_table`` or ``emergence.atomic`` step), SIGKILL it there, and
check that the folder reads back exactly as before or exactly as a clean write leaves it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from emergence import atomic
from fitting.schema import load_results

ROOT = Path(__file__).resolve().parents[2]

# A child process: pause forever at the N-th call of `target` (module:attribute), after
# touching `flag`; then run the emergence CLI with the remaining arguments.
CHILD = textwrap.dedent("""
    import importlib, sys, time
    from pathlib import Path
    target, nth, flag, *argv = sys.argv[1:]
    module, name = target.split(":")
    module = importlib.import_module(module)
    real, calls = getattr(module, name), [0]
    def paused(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(nth):
            Path(flag).touch()
            time.sleep(600)
        return real(*args, **kwargs)
    setattr(module, name, paused)
    from emergence.cli import main
    sys.argv = ["emergence", *argv]
    main()
""")


def kill_at(target: str, nth: int, argv: list, tmp_path: Path) -> bool:
    """Run ``emergence ARGV`` until the ``nth`` call of ``target``, then SIGKILL it.

    Returns False when the writer finished without reaching that call."""
    flag = tmp_path / f"paused-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, target, str(nth), str(flag), *map(str, argv)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not flag.exists():
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read()[-2000:]
            return False
        assert time.monotonic() < deadline, "the writer never reached the kill point"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def snapshot(folder: Path) -> dict[str, str]:
    """Content hash of every visible file (hidden temporaries excluded)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not any(
                part.startswith(".") for part in p.relative_to(folder).parts)}


def tables(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    loaded = load_results(folder, items=True)  # refuses tables from different writes
    return loaded.checkpoints, loaded.results


def run(*argv) -> None:
    proc = subprocess.run([sys.executable, "-m", "emergence", *map(str, argv)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


# Kill points of a results-folder write: inside the first and the second table's write, just
# before the staging folder is swapped in (all tables written), just after the swap.
RESULTS_KILL_POINTS = [
    ("pyarrow.parquet:write_table", 1, "old"),
    ("pyarrow.parquet:write_table", 2, "old"),
    ("emergence.atomic:_swap_in", 1, "old"),
    ("shutil:rmtree", 1, "new"),  # the old folder's removal, after the swap
]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """Two simulated folders written by the CLI: the old (seed 1) and a clean new one (seed 2)."""
    base = tmp_path_factory.mktemp("sim")
    for seed in (1, 2):
        run("simulate", base / f"seed{seed}", "--seed", seed, "--n-items", 50)
    return base / "seed1", base / "seed2"


@pytest.mark.slow
@pytest.mark.parametrize("target, nth, expect", RESULTS_KILL_POINTS)
def test_killed_simulate_overwrite_leaves_the_old_or_the_new_folder(tmp_path, simulated, target, nth, expect):
    folder = tmp_path / "sim"
    shutil.copytree(simulated[0], folder)
    (folder / "notes.txt").write_text("the user's own file")
    old, new = tables(simulated[0]), tables(simulated[1])

    assert kill_at(target, nth, ["simulate", folder, "--seed", 2, "--n-items", 50, "--overwrite"], tmp_path)
    now = tables(folder)
    state = "old" if all(a.equals(b) for a, b in zip(now, old)) else "new" if all(
        a.equals(b) for a, b in zip(now, new)) else "torn"
    assert state == expect
    assert (folder / "notes.txt").read_text() == "the user's own file"  # other files are kept


@pytest.mark.slow
@pytest.mark.parametrize("nth", [1, 2])
def test_killed_import_overwrite_leaves_the_old_folder(tmp_path, simulated, nth):
    from tests.fitting.test_importers import _tiny_gadre

    source = _tiny_gadre(tmp_path / "g")
    folder = tmp_path / "imported"
    shutil.copytree(simulated[0], folder)
    before = snapshot(folder)
    assert kill_at("pyarrow.parquet:write_table", nth, ["import", "gadre", source, "--out", folder, "--overwrite"],
                   tmp_path)
    assert snapshot(folder) == before
    tables(folder)


# One task, three cutoffs, no resampling: the writing is under test, not the fits.
REPORT_ARGS = ["--n-boot", 0, "--workers", 1, "--no-ablations", "--no-profile", "-t", "sim_mmlu",
               "--min-checkpoints", 10]


@pytest.fixture(scope="module")
def report_data(tmp_path_factory):
    """A small simulated folder and a report of it."""
    base = tmp_path_factory.mktemp("report")
    run("simulate", base / "data", "--seed", 3, "--n-items", 200, "--level", 100, "--level", 1000, "--subsets", 1)
    run("report", base / "data", "--out", base / "old", *REPORT_ARGS)
    return base / "data", base / "old"


@pytest.mark.slow
@pytest.mark.parametrize("target, nth", [("emergence.atomic:write_bytes", 1), ("emergence.atomic:write_bytes", 2),
                                         ("emergence.atomic:write_text", 2), ("emergence.atomic:_swap_in", 1)])
def test_killed_report_leaves_the_old_report(tmp_path, report_data, target, nth):
    data, old = report_data
    out = tmp_path / "report"
    shutil.copytree(old, out)
    (out / "index.html").write_text((out / "index.html").read_text() + "<!-- the old one -->")
    before = snapshot(out)
    assert kill_at(target, nth, ["report", data, "--out", out, *REPORT_ARGS], tmp_path)
    assert snapshot(out) == before
    if target.endswith("_swap_in"):  # and the next run replaces it whole
        run("report", data, "--out", out, *REPORT_ARGS)
        after = snapshot(out)
        assert after.keys() == before.keys() and after["index.html"] != before["index.html"]


def test_concurrent_folder_writers_never_tear_a_folder(tmp_path):
    """Eight threads swap their own version of one folder in, while a reader checks that every
    folder it sees is one writer's whole version (its files agree)."""
    folder, errors, stop = tmp_path / "out", [], threading.Event()

    def writer(k: int) -> None:
        for i in range(15):
            with atomic.replace_folder(folder, drop=("a.txt", "b.txt", "figures")) as staging:
                (staging / "figures").mkdir()
                for name in ("a.txt", "b.txt", "figures/c.txt"):
                    atomic.write_text(staging / name, f"{k}-{i}" * 100)

    def reader() -> None:
        """Reads one folder as a reader must: through one handle on the folder, so a swap
        in the middle of reading cannot mix two folders (FileNotFoundError: the folder it
        holds was retired and is being removed; look again)."""
        while not stop.is_set():
            try:
                fd = os.open(folder, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                texts = {_read_at(fd, n) for n in ("a.txt", "b.txt", "figures/c.txt")}
            except FileNotFoundError:
                continue
            finally:
                os.close(fd)
            if len(texts) != 1:
                errors.append(f"torn: {sorted(t[:6] for t in texts)}")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    watch = threading.Thread(target=reader)
    watch.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watch.join()
    assert not errors, errors[:3]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folders left behind"


def _read_at(dir_fd: int, name: str) -> str:
    with open(name, opener=lambda path, flags: os.open(path, flags, dir_fd=dir_fd)) as f:
        return f.read()


def test_concurrent_file_writers_use_unique_temporaries(tmp_path):
    target = tmp_path / "index.html"

    def writer(k: int) -> None:
        for i in range(50):
            atomic.write_text(target, f"<p>{k}</p>" * 2000)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = target.read_text()
    assert len(set(text.split("</p>")[:-1])) == 1  # one writer's whole text
    assert [p.name for p in tmp_path.iterdir()] == ["index.html"]


def test_outputs_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic.write_text(tmp_path / "shared.json", "{}")
        with atomic.replace_folder(tmp_path / "folder") as staging:
            atomic.write_text(staging / "x", "1")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "folder" / "x").stat().st_mode & 0o777 == 0o644


def test_tables_from_different_writes_are_refused(tmp_path):
    """What a kill between two in-place table writes would leave (harvest's in-place write)."""
    from emergence.errors import ContractError
    from fitting.simulate import simulate

    simulate(seed=1, out=tmp_path / "a")
    simulate(seed=2, out=tmp_path / "b")
    (tmp_path / "b" / "results.parquet").replace(tmp_path / "a" / "results.parquet")
    with pytest.raises(ContractError, match="different writes"):
        load_results(tmp_path / "a")


def test_a_folder_holding_the_working_directory_is_not_swapped(tmp_path, monkeypatch):
    from emergence.errors import OutputError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match="current folder"):
        with atomic.replace_folder(tmp_path):
            pass
