"""The harvest spec: valid files parse; each mistake is one line naming the file and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from emergence.errors import SpecError
from harvest.spec import load_spec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

GOOD = f"""
seed = 7

[engine]
name = "hf"
batch_size = 4

[held_out]
path = "{FIXTURES / 'heldout.txt'}"
window = 128

[[checkpoints]]
name = "p-1000"
hub = "EleutherAI/pythia-70m"
revision = "step1000"
family = "pythia"
params = 70426624
step = 1000
tokens_per_step = 2097152

[[checkpoints]]
path = "models/tiny"
family = "tiny"
params = 1000
tokens = 5000

[[tasks]]
task = "mmlu"
data = "{FIXTURES / 'mmlu'}"
shots = 2
limit = 3

[[tasks]]
task = "synthetic_copy"
name = "copy_0shot"
shots = 0
options = {{ n_test = 10, length = 4 }}

[sweep]
levels = [8, 32]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_good_spec_parses(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    hub, local = spec.checkpoints
    assert hub.ref.path == "EleutherAI/pythia-70m" and hub.ref.revision == "step1000"
    assert hub.tokens == 1000 * 2097152 and hub.step == 1000 and hub.name == "p-1000"
    assert local.ref.path == str((tmp_path / "models/tiny").resolve())  # relative to the spec file
    assert local.ref.revision is None and local.name == "tiny"
    assert spec.tasks[1].name == "copy_0shot" and spec.tasks[1].options == {"n_test": 10, "length": 4}
    assert spec.engine.options == {"batch_size": 4} and not spec.engine.trust_remote_code
    assert spec.sweep == {"levels": [8, 32]} and spec.seed == 7
    assert len(spec.spec_hash) == 64


def test_spec_hash_changes_with_content(tmp_path):
    a = load_spec(write(tmp_path, GOOD)).spec_hash
    b = load_spec(write(tmp_path, GOOD.replace("limit = 3", "limit = 4"))).spec_hash
    assert a != b


@pytest.mark.parametrize(
    "edit, message",
    [
        (("family = \"tiny\"\n", ""), "checkpoints[1].family: is required"),
        (("params = 1000", "params = \"big\""), "checkpoints[1].params: must be an integer"),
        (("params = 1000", "params = -5"), "checkpoints[1].params: must be positive"),
        (("tokens = 5000", "colour = 1"), "checkpoints[1].colour: unknown key"),
        (("task = \"mmlu\"", "task = \"mmlux\""), "did you mean 'mmlu'"),
        (("name = \"copy_0shot\"", "name = \"mmlu\""), "tasks[1].name: duplicate 'mmlu'"),
        (("path = \"models/tiny\"", "hub = \"x/y\"\npath = \"models/tiny\""), "give exactly one of 'hub'"),
        (("name = \"hf\"", "name = \"tgi\""), "engine.name: unknown engine 'tgi'"),
        (("name = \"hf\"", "name = \"hf\"\nbogus_key = 1"), "engine: engine 'hf': unknown option(s) bogus_key"),
        (("window = 128", "window = 0"), "held_out.window: must be positive"),
        (("heldout.txt", "missing.txt"), "held_out.path: file not found"),
        (("tokens = 5000", "step = 3"), "checkpoints[1].tokens: is required"),
        (("seed = 7", "seed = 7\nextra = 1"), "extra: unknown key"),
    ],
)
def test_bad_spec_is_one_line_naming_the_key(tmp_path, edit, message):
    old, new = edit
    assert old in GOOD
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, GOOD.replace(old, new, 1)))
    text = str(info.value)
    assert message in text and "\n" not in text and "spec.toml" in text


def test_held_out_required_unless_losses_given(tmp_path):
    no_held = GOOD.split("[held_out]")[0] + "[[checkpoints]]" + GOOD.split("[[checkpoints]]", 1)[1]
    with pytest.raises(SpecError, match="held_out: is required"):
        load_spec(write(tmp_path, no_held))
    given = no_held.replace("params = 1000", "params = 1000\npretrain_loss = 3.2").replace(
        "params = 70426624", "params = 70426624\npretrain_loss = 2.9")
    assert load_spec(write(tmp_path, given)).checkpoints[1].pretrain_loss == 3.2


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(write(tmp_path, "[[checkpoints]\n"))
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.toml")


def test_held_out_documents_from_files(tmp_path):
    import polars as pl

    from harvest.loss import documents_hash, read_documents
    from harvest.spec import HeldOutSpec

    pl.DataFrame({"text": ["one doc", "", "two doc", "three"], "n": [1, 2, 3, 4]}).write_ndjson(tmp_path / "h.jsonl")
    docs = read_documents(HeldOutSpec(path=str(tmp_path / "h.jsonl"), max_documents=2))
    assert docs == ["one doc", "two doc"]  # empty rows dropped, then the first N
    assert documents_hash(docs) != documents_hash(["one doc", "two doc "])
    txt = read_documents(HeldOutSpec(path=str(FIXTURES / "heldout.txt")))
    assert len(txt) == 1 and txt[0].startswith(open(FIXTURES / "heldout.txt").read()[:20])
    with pytest.raises(SpecError, match="held_out.column: 'body' not in"):
        read_documents(HeldOutSpec(path=str(tmp_path / "h.jsonl"), column="body"))


# --------------------------------------------------------------------------- device and dtype defaults


def _machine(monkeypatch, cuda: bool, bf16: bool = True) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


@pytest.mark.parametrize("cuda, bf16, engine, device, dtype", [
    (False, False, "", "cpu", "float32"),  # CPU: float32, as before
    (True, True, "", "cuda", "bfloat16"),  # a GPU box: bfloat16 on CUDA
    (True, False, "", "cuda", "float32"),  # an older GPU without bfloat16
    (True, True, 'device = "cpu"', "cpu", "float32"),  # an explicit device still works
    (True, True, 'device = "cuda:3"', "cuda:3", "bfloat16"),
    (True, True, 'dtype = "float16"', "cuda", "float16"),  # an explicit dtype is kept
    (False, False, 'dtype = "auto"', "cpu", "float32"),
])
def test_engine_device_and_dtype_default_to_the_machine(tmp_path, monkeypatch, cuda, bf16, engine, device, dtype):
    _machine(monkeypatch, cuda, bf16)
    spec = load_spec(write(tmp_path, GOOD.replace('name = "hf"', f'name = "hf"\n{engine}')))
    assert (spec.engine.device, spec.engine.dtype) == (device, dtype)
    assert all(c.ref.dtype == dtype for c in spec.checkpoints)  # what loads and what keys hold
    assert spec.engine.dtype_setting == ("float16" if "float16" in engine else "auto")


def test_auto_dtype_on_a_cpu_keeps_the_float32_unit_keys(tmp_path, monkeypatch):
    from harvest.evaluate import checkpoint_identity

    _machine(monkeypatch, cuda=False)
    keys = [[checkpoint_identity(c) for c in load_spec(write(tmp_path, GOOD.replace(
        'name = "hf"', f'name = "hf"\n{extra}'))).checkpoints] for extra in ("", 'dtype = "auto"', 'dtype = "float32"')]
    assert keys[0] == keys[1] == keys[2]
    assert keys[0][0]["dtype"] == "float32"


def test_a_bad_device_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(SpecError, match=r"engine.device: must be auto, cpu, cuda or cuda:N, got 'gpu0'"):
        load_spec(write(tmp_path, GOOD.replace('name = "hf"', 'name = "hf"\ndevice = "gpu0"')))
