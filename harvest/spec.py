"""The harvest spec: a TOML file naming checkpoints, held-out text, tasks and the engine.

Example (every key is documented in ``docs/harvest.md``)::

    seed = 0                          # optional, recorded in the manifest

    [engine]
    name = "hf"                       # "hf" (default) or "vllm"
    dtype = "auto"                    # auto (default), float32, float16 or bfloat16
    device = "auto"                   # hf engine: auto (default), cpu, cuda or cuda:N
    trust_remote_code = false         # never true unless you trust the checkpoint's code
    batch_size = 16                   # any other key is an engine option

    [held_out]                        # the text pretraining loss is measured on
    path = "heldout.txt"              # a local .txt/.jsonl/.json/.parquet file, or:
    # dataset = "allenai/c4"; config = "en"; split = "validation"; column = "text"
    max_documents = 200
    window = 1024                     # tokens per window (see harvest/loss.py)

    [[checkpoints]]
    name = "pythia-160m-step1000"
    hub = "EleutherAI/pythia-160m"    # a hub id (with revision), or path = "local/folder"
    revision = "step1000"
    family = "pythia"
    params = 162322944
    step = 1000                       # tokens = step * tokens_per_step, or give tokens = ...
    tokens_per_step = 2097152

    [[tasks]]
    task = "mmlu"                     # a registry name (harvest.tasks.TASKS)
    shots = 5
    limit = 500                       # first N items of the eval split
    seed = 1234                       # few-shot sampling seed (lm-eval's default)

Defaults fit the machine that reads the spec: ``device = "auto"`` is CUDA when
``torch.cuda.is_available()``, else the CPU; ``dtype = "auto"`` is bfloat16 on a CUDA device that
supports it (``torch.cuda.is_bf16_supported()``), else float32. Both resolve when the spec is
loaded, before any unit key is hashed (keys hold the resolved dtype, so a CPU run's keys are
those of an explicit ``dtype = "float32"``); the manifest records the setting and what it
resolved to. Finetuning in bfloat16 is mixed precision: float32 trainable weights (master
weights), bfloat16 forward passes under ``torch.autocast`` (see :mod:`harvest.finetune`). A Ray
sweep resolves on the driver: on a CPU-only head node give ``device``/``dtype`` explicitly.

Relative paths resolve against the spec file's folder, never the working directory.
A ``[sweep]`` table is kept raw (``HarvestSpec.sweep``) for the finetuning sweep to parse.
Every error is one line naming the file and the key.

Size: one cohesive thing, the harvest spec's grammar and its one-line errors.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emergence.errors import SpecError
from harvest.engines import ENGINE_CLASSES, engine_class
from harvest.engines.base import ModelRef

TOP_LEVEL_KEYS = {"seed", "engine", "held_out", "checkpoints", "tasks", "sweep"}
ENGINE_NAMES = tuple(ENGINE_CLASSES)  # the engine registry (harvest.engines)


@dataclass(frozen=True)
class CheckpointSpec:
    """One checkpoint: where its weights are and what it is on the compute axis."""

    name: str
    family: str
    params: int
    tokens: int
    ref: ModelRef
    step: int | None = None
    pretrain_loss: float | None = None  # given in the spec: not measured

    @property
    def location(self) -> str:
        return self.ref.path if self.ref.revision is None else f"{self.ref.path}@{self.ref.revision}"


@dataclass(frozen=True)
class HeldOutSpec:
    """Held-out text: a local file or a dataset (read with ``datasets``)."""

    path: str | None = None
    dataset: str | None = None
    config: str | None = None
    split: str = "validation"
    column: str = "text"
    max_documents: int | None = None
    window: int = 1024


@dataclass(frozen=True)
class TaskSpec:
    """One task evaluation: which registry task, how many shots, which items."""

    task: str
    name: str  # the ``task`` column in results; unique in a spec
    shots: int | None = None  # None: the task's default
    split: str | None = None  # eval split (spec key ``eval_split``, or ``split``); None: the task's
    fewshot_split: str | None = None  # where shots come from; None: the task's
    limit: int | None = None  # first N items (after the optional item_seed shuffle)
    seed: int = 1234  # few-shot sampling seed (lm-eval's default)
    item_seed: int | None = None  # shuffle eval items with this seed before ``limit``
    data: str | None = None  # local folder or file with the hub's columns
    dataset: str | None = None  # hub dataset name overriding the task's default
    config: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # task-specific (synthetic sizes, ...)
    train_split: str | None = None  # finetuning examples; None: the task's (MMLU: auxiliary_train)

    @property
    def eval_split(self) -> str | None:
        return self.split


@dataclass(frozen=True)
class EngineSpec:
    name: str = "hf"
    dtype: str = "float32"  # resolved (never "auto"): what the checkpoints load in, and in unit keys
    trust_remote_code: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"  # resolved from options["device"] (default "auto")
    dtype_setting: str = "auto"  # as the spec gave it


@dataclass(frozen=True)
class HarvestSpec:
    checkpoints: tuple[CheckpointSpec, ...]
    tasks: tuple[TaskSpec, ...]
    engine: EngineSpec
    held_out: HeldOutSpec | None
    seed: int = 0
    sweep: dict[str, Any] | None = None  # raw; parsed by the sweep stage
    source: str = "<memory>"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def spec_hash(self) -> str:
        """sha256 of the spec's content (canonical JSON of the parsed TOML)."""
        canonical = json.dumps(self.raw, sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- parsing helpers


class _Where:
    """Formats ``file: key: message`` errors."""

    def __init__(self, source: str):
        self.source = source

    def error(self, key: str, message: str) -> SpecError:
        return SpecError(f"{self.source}: {key}: {message}")


def _get(table: dict, key: str, where: _Where, prefix: str, kind, default=None, required=False):
    """Read ``table[key]`` checking its type; ``kind`` is a type or tuple of types."""
    if key not in table:
        if required:
            raise where.error(f"{prefix}{key}", "is required")
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise where.error(f"{prefix}{key}", f"must be {_kind_name(kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise where.error(f"{prefix}{key}", f"must be {_kind_name(kinds)}, got {value!r}")
    return value


def _kind_name(kinds) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             dict: "a table", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _positive(value, key: str, where: _Where, allow_zero=False):
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise where.error(key, f"must be {'>= 0' if allow_zero else 'positive'}, got {value}")
    return value


def _unknown_keys(table: dict, allowed: set, prefix: str, where: _Where) -> None:
    for key in table:
        if key not in allowed:
            raise where.error(f"{prefix}{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _resolve(path: str, base: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


# --------------------------------------------------------------------------- sections

CHECKPOINT_KEYS = {"name", "hub", "path", "revision", "family", "params", "tokens", "step",
                   "tokens_per_step", "pretrain_loss"}


def _parse_checkpoint(t: dict, i: int, where: _Where, base: Path, engine: EngineSpec) -> CheckpointSpec:
    p = f"checkpoints[{i}]."
    if not isinstance(t, dict):
        raise where.error(f"checkpoints[{i}]", "must be a table ([[checkpoints]])")
    _unknown_keys(t, CHECKPOINT_KEYS, p, where)
    hub, path = _get(t, "hub", where, p, str), _get(t, "path", where, p, str)
    if (hub is None) == (path is None):
        raise where.error(f"{p}hub", "give exactly one of 'hub' (a model id) or 'path' (a local folder)")
    revision = _get(t, "revision", where, p, str)
    if path is not None and revision is not None:
        raise where.error(f"{p}revision", "only applies to 'hub' checkpoints")
    location = hub if hub is not None else _resolve(path, base)
    ref = ModelRef(location, revision, engine.trust_remote_code, engine.dtype)
    name = _get(t, "name", where, p, str, default=(hub or Path(path).name) + (f"@{revision}" if revision else ""))
    params = _positive(_get(t, "params", where, p, int, required=True), f"{p}params", where)
    tokens, step = _tokens(t, p, where)
    loss = _get(t, "pretrain_loss", where, p, (int, float))
    _positive(loss, f"{p}pretrain_loss", where)
    family = _get(t, "family", where, p, str, required=True)
    return CheckpointSpec(name, family, params, tokens, ref, step, None if loss is None else float(loss))


def _tokens(t: dict, p: str, where: _Where) -> tuple[int, int | None]:
    tokens = _get(t, "tokens", where, p, int)
    step = _get(t, "step", where, p, int)
    per_step = _get(t, "tokens_per_step", where, p, int)
    if tokens is not None and (step is not None and per_step is not None):
        raise where.error(f"{p}tokens", "give either 'tokens' or 'step' with 'tokens_per_step', not both")
    if tokens is None:
        if step is None or per_step is None:
            raise where.error(f"{p}tokens", "is required (or give 'step' and 'tokens_per_step')")
        _positive(step, f"{p}step", where)
        tokens = step * _positive(per_step, f"{p}tokens_per_step", where)
    return _positive(tokens, f"{p}tokens", where), step


HELD_OUT_KEYS = {"path", "dataset", "config", "split", "column", "max_documents", "window"}


def _parse_held_out(t: Any, where: _Where, base: Path) -> HeldOutSpec | None:
    if t is None:
        return None
    if not isinstance(t, dict):
        raise where.error("held_out", "must be a table ([held_out])")
    p = "held_out."
    _unknown_keys(t, HELD_OUT_KEYS, p, where)
    path, dataset = _get(t, "path", where, p, str), _get(t, "dataset", where, p, str)
    if (path is None) == (dataset is None):
        raise where.error(f"{p}path", "give exactly one of 'path' (a local file) or 'dataset' (a dataset name)")
    if path is not None:
        path = _resolve(path, base)
        if not Path(path).is_file():
            raise where.error(f"{p}path", f"file not found: {path}")
    return HeldOutSpec(
        path=path, dataset=dataset, config=_get(t, "config", where, p, str),
        split=_get(t, "split", where, p, str, default="validation"),
        column=_get(t, "column", where, p, str, default="text"),
        max_documents=_positive(_get(t, "max_documents", where, p, int), f"{p}max_documents", where),
        window=_positive(_get(t, "window", where, p, int, default=1024), f"{p}window", where),
    )


TASK_KEYS = {"task", "name", "shots", "split", "eval_split", "fewshot_split", "train_split", "limit", "seed",
             "item_seed", "data", "dataset", "config", "options"}
SPLIT_KEYS = ("eval_split", "fewshot_split", "train_split")


def _parse_task(t: dict, i: int, where: _Where, base: Path) -> TaskSpec:
    from harvest.tasks import check_task_name

    p = f"tasks[{i}]."
    if not isinstance(t, dict):
        raise where.error(f"tasks[{i}]", "must be a table ([[tasks]])")
    _unknown_keys(t, TASK_KEYS, p, where)
    task = _get(t, "task", where, p, str, required=True)
    problem = check_task_name(task)
    if problem:
        raise where.error(f"{p}task", problem)
    data = _get(t, "data", where, p, str)
    if data is not None:
        data = _resolve(data, base)
        if not Path(data).exists() and "{split}" not in data:
            raise where.error(f"{p}data", f"not found: {data}")
    if "split" in t and "eval_split" in t:
        raise where.error(f"{p}split", "give 'eval_split' or its older name 'split', not both")
    splits = {key: _get(t, "split" if key == "eval_split" and "split" in t else key, where, p, str)
              for key in SPLIT_KEYS}
    spec = TaskSpec(
        task=task, name=_get(t, "name", where, p, str, default=task),
        shots=_positive(_get(t, "shots", where, p, int), f"{p}shots", where, allow_zero=True),
        split=splits["eval_split"], fewshot_split=splits["fewshot_split"], train_split=splits["train_split"],
        limit=_positive(_get(t, "limit", where, p, int), f"{p}limit", where),
        seed=_get(t, "seed", where, p, int, default=1234), item_seed=_get(t, "item_seed", where, p, int),
        data=data, dataset=_get(t, "dataset", where, p, str), config=_get(t, "config", where, p, str),
        options=_task_options(task, dict(_get(t, "options", where, p, dict, default={})), base),
    )
    named = {("split" if k == "eval_split" and "split" in t else k): v for k, v in splits.items() if v is not None}
    _check_task_splits(spec, named, p, where)
    return spec


def _task_options(task: str, options: dict[str, Any], base: Path) -> dict[str, Any]:
    """An lm-eval task YAML's path (option ``yaml``) is relative to the spec, as ``data`` is."""
    if task == "lm_eval_yaml" and isinstance(options.get("yaml"), str):
        options["yaml"] = _resolve(options["yaml"], base)
    return options


def _check_task_splits(spec: TaskSpec, given: dict[str, str], p: str, where: _Where) -> None:
    """The splits the spec names exist: local files, or the hub dataset's declared splits. An
    lm-eval YAML task is always built here, so that its unsupported fields are refused when read."""
    from harvest.tasks import TaskData, get_task

    if not given and spec.task != "lm_eval_yaml":
        return
    try:
        task = get_task(spec.task, TaskData(spec.data, spec.dataset, spec.config), **spec.options)
    except SpecError as err:
        raise where.error(f"{p}options", str(err)) from None
    for key, split in given.items():
        problem = task.check_split(split)
        if problem:
            raise where.error(f"{p}{key}", problem)


def _parse_engine(t: Any, where: _Where) -> EngineSpec:
    from harvest.engines.base import DEVICE_SETTINGS, check_device, resolve_device, resolve_dtype

    if t is None:
        t = {}
    if not isinstance(t, dict):
        raise where.error("engine", "must be a table ([engine])")
    name = _get(t, "name", where, "engine.", str, default="hf")
    if name not in ENGINE_NAMES:
        raise where.error("engine.name", f"unknown engine {name!r} (choose from {', '.join(ENGINE_NAMES)})")
    dtype = _get(t, "dtype", where, "engine.", str, default="auto")
    if dtype not in ("float32", "float16", "bfloat16", "auto"):
        raise where.error("engine.dtype", f"must be float32, float16, bfloat16 or auto, got {dtype!r}")
    trust = _get(t, "trust_remote_code", where, "engine.", bool, default=False)
    options = {k: v for k, v in t.items() if k not in ("name", "dtype", "trust_remote_code")}
    try:
        engine_class(name).check_options(options)
    except SpecError as err:
        raise where.error("engine", str(err)) from None
    device = options.get("device", "auto")
    if not isinstance(device, str) or not check_device(device):
        raise where.error("engine.device", f"must be {DEVICE_SETTINGS}, got {device!r}")
    device = resolve_device(device)
    return EngineSpec(name, resolve_dtype(dtype, device), trust, options, device, dtype)


# --------------------------------------------------------------------------- entry points


def parse_spec(raw: dict[str, Any], source: str = "<memory>", base: Path | None = None) -> HarvestSpec:
    """Validate a parsed TOML document into a :class:`HarvestSpec`."""
    where, base = _Where(source), base or Path.cwd()
    _unknown_keys(raw, TOP_LEVEL_KEYS, "", where)
    engine = _parse_engine(raw.get("engine"), where)
    ckpts = _get(raw, "checkpoints", where, "", list, required=True)
    if not ckpts:
        raise where.error("checkpoints", "is empty: list at least one [[checkpoints]]")
    checkpoints = tuple(_parse_checkpoint(t, i, where, base, engine) for i, t in enumerate(ckpts))
    tasks = tuple(_parse_task(t, i, where, base) for i, t in enumerate(_get(raw, "tasks", where, "", list, default=[])))
    _check_unique([c.name for c in checkpoints], "checkpoints", "name", where)
    _check_unique([t.name for t in tasks], "tasks", "name", where)
    held_out = _parse_held_out(raw.get("held_out"), where, base)
    if held_out is None and any(c.pretrain_loss is None for c in checkpoints):
        first = next(i for i, c in enumerate(checkpoints) if c.pretrain_loss is None)
        raise where.error("held_out", f"is required to measure pretraining loss (checkpoints[{first}] "
                          "has no 'pretrain_loss')")
    sweep = _get(raw, "sweep", where, "", dict)
    return HarvestSpec(checkpoints, tasks, engine, held_out, _get(raw, "seed", where, "", int, default=0),
                       sweep, source, raw)


def _check_unique(names: list[str], section: str, key: str, where: _Where) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise where.error(f"{section}[{i}].{key}", f"duplicate {name!r} (names must be unique)")
        seen.add(name)


def load_spec(path: str | Path) -> HarvestSpec:
    """Read and validate a TOML harvest spec."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"{path}: is a folder; give the spec's TOML file")
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: not valid TOML ({err})") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a UTF-8 text file") from None
    except RecursionError:
        raise SpecError(f"{path}: TOML nested too deeply to read") from None
    return parse_spec(raw, str(path), path.parent.resolve())
