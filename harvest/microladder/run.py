"""The micro-ladder end to end: pretrain every size, then harvest, fit, backtest and report.

    out/
      heldout_background.jsonl    pretraining-loss text (background language only, all sizes)
      heldout_mixed.jsonl         background + task blocks (recorded in the manifest only)
      models/<size>/step_XXXXXX/  HF checkpoints (config, safetensors, tokenizer)
      harvest.toml                the harvest spec naming every checkpoint and task
      results/                    checkpoints / results / items .parquet (the real harvest)
      fit.json backtest.json report/   what the fitting stage made of it
      manifest.json               command, versions, seeds, configs, wall times

Pretraining runs as subprocesses, one torch thread each, ``parallel`` at a time, largest first
(measured on 2 cores: two single-thread processes beat one two-thread process 8–15x). Every
stage is resumable: a finished size has ``done.json``, the harvest resumes its own units.

Size: one cohesive thing, the experiment's script read top to bottom (stages in the order they
run); each stage's work is in the modules it calls.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path

from emergence.atomic import write_text
from emergence.errors import EmergenceError
from harvest.microladder.corpus import SEQ_LEN, Corpus, CorpusConfig
from harvest.microladder.pretrain import SIZES, TrainConfig

HELDOUT_SEEDS = {"background": 20_000, "mixed": 20_001}

# LoRA targets of the ladder's sweep when its recipe names none: the attention projections the
# shipped run used (harvest.finetune's default is "all-linear").
LADDER_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class LadderError(EmergenceError):
    """A micro-ladder stage failed (its log file is named in the message)."""


@dataclass(frozen=True)
class LadderConfig:
    """Everything that determines a micro-ladder run (recorded whole in the manifest)."""

    sizes: tuple[str, ...] = ("w3", "w2", "s1", "s0")  # largest first: it bounds the wall time
    train: TrainConfig = TrainConfig(steps=1500, first_checkpoint=25, n_checkpoints=16)
    corpus: CorpusConfig = CorpusConfig()
    tasks: tuple[str, ...] = ("ml_topic", "ml_topic_short", "ml_copy")
    shots: int = 2
    n_test: int = 400
    heldout_docs: int = 256
    data_levels: tuple[int, ...] = (8, 32, 128, 512)
    subset_seeds: tuple[int, ...] = (0, 1)
    # Rank-4 LoRA on the attention projections, as in the paper's finding that even rank-1 LoRA
    # moves the elbow. Full finetuning (lr 1e-3) taught the topic task from scratch: 32 examples
    # lifted checkpoints of loss 4.2 that know next to nothing of the language, so the data level
    # set the accuracy reached, not where the curve left chance (docs/microladder.md). A low-rank
    # adapter can only route what the checkpoint already represents: it elicits, it cannot teach.
    recipe: dict = field(default_factory=lambda: {"method": "lora", "lora_rank": 4, "lora_alpha": 8.0, "lr": 3e-3,
                                                  "epochs": 4.0, "min_steps": 30, "batch_size": 32,
                                                  "weight_decay": 0.0})
    parallel: int = 2  # pretraining processes at a time
    shards: int = 2  # sweep shards run side by side
    sweep: bool = True
    # Finetune every n-th checkpoint of a size, counted back from its last (1: all). All: a large
    # model leaves the pre-emergence region within its first few checkpoints.
    sweep_every: int = 1


def quick_config() -> LadderConfig:
    """Minutes, for tests: two tiny sizes, few steps, small evals, a 2-level sweep."""
    return LadderConfig(
        sizes=("t1", "t0"), train=TrainConfig(steps=60, first_checkpoint=20, n_checkpoints=3, batch_size=8,
                                              heldout_docs=8, log_every=20),
        tasks=("ml_topic", "ml_copy"), n_test=40, heldout_docs=16, data_levels=(4, 16), subset_seeds=(0,), shards=1,
        recipe={"method": "full", "lr": 3e-4, "epochs": 1.0, "min_steps": 4, "batch_size": 8}, sweep_every=2,
    )


# --------------------------------------------------------------------------- stages


def write_heldout(out: Path, cfg: LadderConfig) -> dict[str, Path]:
    """The held-out documents as JSONL (one ``{"text": ...}`` per line)."""
    corpus, paths = Corpus(cfg.corpus), {}
    for name, seed in HELDOUT_SEEDS.items():
        path = out / f"heldout_{name}.jsonl"
        texts = corpus.heldout_texts(cfg.heldout_docs, seed, with_tasks=(name == "mixed"))
        write_text(path, "".join(json.dumps({"text": t}) + "\n" for t in texts))
        paths[name] = path
    return paths


def pretrain_command(size: str, out: Path, cfg: LadderConfig) -> list[str]:
    train = {k: v for k, v in asdict(cfg.train).items() if k != "size"}
    corpus = asdict(cfg.corpus)
    return [sys.executable, "-m", "harvest.microladder.pretrain", "--size", size, "--out", str(out),
            "--config", json.dumps(train), "--corpus", json.dumps(corpus)]


def single_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def pretrain_all(models: Path, cfg: LadderConfig, say) -> dict[str, float]:
    """Train every size (``cfg.parallel`` processes at a time); wall seconds per size."""
    queue, running, walls = list(cfg.sizes), {}, {}
    while queue or running:
        while queue and len(running) < cfg.parallel:
            size = queue.pop(0)
            log = open(models / f"{size}.log", "a")
            proc = subprocess.Popen(pretrain_command(size, models / size, cfg), stdout=log, stderr=subprocess.STDOUT,
                                    env=single_thread_env())
            running[size] = (proc, time.time(), log)
            say(f"pretraining {size} (pid {proc.pid})")
        time.sleep(1.0)
        for size, (proc, start, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[size]
            if proc.returncode != 0:
                for other, *_ in running.values():
                    other.terminate()
                raise LadderError(f"pretraining {size} failed (exit {proc.returncode}); see {models / f'{size}.log'}")
            walls[size] = round(time.time() - start, 1)
            say(f"pretrained {size} in {walls[size]} s")
    return walls


def checkpoint_rows(models: Path, cfg: LadderConfig) -> list[dict]:
    """One row per saved checkpoint, from each size's training log."""
    rows = []
    for size in cfg.sizes:
        for line in (models / size / "train_log.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if "checkpoint" in rec and (models / size / rec["checkpoint"]).is_dir():
                rows.append({"size": size, **rec})
    return rows


def logged_pretrain_seconds(rows: list[dict]) -> dict[str, float]:
    """Training seconds per size as its own log recorded them (survives an orchestrator restart)."""
    return {size: max(r["elapsed_s"] for r in rows if r["size"] == size) for size in dict.fromkeys(r["size"] for r in rows)}


def checkpoint_name(row: dict) -> str:
    return f"{row['size']}-{row['checkpoint']}"


def sweep_checkpoints(rows: list[dict], every: int) -> list[str]:
    """Every ``every``-th checkpoint of each size, counted back from its last one."""
    names = []
    for size in dict.fromkeys(r["size"] for r in rows):
        mine = [r for r in rows if r["size"] == size]
        names += [checkpoint_name(r) for r in mine[::-1][::every][::-1]]
    return names


def write_spec(out: Path, rows: list[dict], cfg: LadderConfig) -> Path:
    """The harvest spec (TOML) over every checkpoint and task; paths relative to ``out``."""
    lines = ["# written by harvest.microladder.run", f"seed = {cfg.train.seed}", "",
             "[engine]", 'name = "hf"', "batch_size = 32", "",
             "[held_out]", 'path = "heldout_background.jsonl"', f"window = {SEQ_LEN}", ""]
    for r in rows:
        lines += ["[[checkpoints]]", f'name = "{checkpoint_name(r)}"',
                  f'path = "models/{r["size"]}/{r["checkpoint"]}"', f'family = "microladder-{r["size"]}"',
                  f'params = {r["params"]}', f'tokens = {r["tokens"]}', ""]
    from harvest.microladder.tasks import LANGUAGE_TASKS

    for task in cfg.tasks:
        lines += ["[[tasks]]", f'task = "{task}"', f"shots = {cfg.shots}", f"seed = {cfg.train.seed + 1234}",
                  "[tasks.options]", f"n_test = {cfg.n_test}"]
        if task in LANGUAGE_TASKS and cfg.corpus.topic_shared_head:  # the language the models learned
            lines.append(f"shared_head = {cfg.corpus.topic_shared_head}")
        lines.append("")
    if cfg.sweep:
        names = json.dumps(sweep_checkpoints(rows, cfg.sweep_every))
        lines += ["[sweep]", f"n_train = {list(cfg.data_levels)}", f"subset_seeds = {list(cfg.subset_seeds)}",
                  "nested = true", "eval_shots = 0", f"checkpoints = {names}", "", "[sweep.recipe]"]
        recipe = dict(cfg.recipe)
        if recipe.get("method", "lora") == "lora":  # the ladder's adapters are on attention (not
            recipe.setdefault("target_modules", list(LADDER_LORA_TARGETS))  # the recipe's all-linear)
        lines += [f"{k} = {json.dumps(v)}" for k, v in recipe.items()]
    path = out / "harvest.toml"
    return write_text(path, "\n".join(lines) + "\n")


def emergence(args: list[str], log: Path, *, capture: bool = False) -> str:
    """Run ``emergence ARGS`` (a subprocess: the real CLI); raise with the log on failure."""
    cmd = [str(Path(sys.executable).with_name("emergence")), *args]
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE if capture else f, stderr=f, env=single_thread_env(),
                              text=True)
    if proc.returncode != 0:
        raise LadderError(f"`emergence {' '.join(args)}` failed (exit {proc.returncode}); see {log}")
    return proc.stdout if capture else ""


def harvest(out: Path, spec: Path, cfg: LadderConfig, say) -> dict[str, float]:
    """Few-shot eval, then the finetune sweep in ``cfg.shards`` side-by-side shards, then merge."""
    results, log, walls = out / "results", out / "harvest.log", {}
    t0 = time.time()
    emergence(["harvest", "eval", str(spec), "--out", str(results), "--quiet"], log)
    walls["eval_s"] = round(time.time() - t0, 1)
    say(f"few-shot harvest done in {walls['eval_s']} s")
    if cfg.sweep:
        t0 = time.time()
        run_sweep(results, spec, cfg, log)
        walls["sweep_s"] = round(time.time() - t0, 1)
        say(f"finetune sweep done in {walls['sweep_s']} s")
    return walls


def run_sweep(results: Path, spec: Path, cfg: LadderConfig, log: Path) -> None:
    """The sweep, in ``cfg.shards`` side-by-side shards merged with ``emergence harvest merge``.

    Each shard writes its own folder (``results-shard{i}``), seeded with the parts already in
    ``results/parts`` so a rerun resumes instead of recomputing them.
    """
    if cfg.shards <= 1:
        emergence(["harvest", "sweep", str(spec), "--out", str(results), "--quiet"], log)
        return
    shard_dirs = [results.parent / f"results-shard{i}" for i in range(cfg.shards)]
    for folder in shard_dirs:
        if (results / "parts").is_dir():
            shutil.copytree(results / "parts", folder / "parts", dirs_exist_ok=True)
    exe = str(Path(sys.executable).with_name("emergence"))
    procs = [subprocess.Popen([exe, "harvest", "sweep", str(spec), "--out", str(folder), "--shard", f"{i}/{cfg.shards}",
                               "--quiet"], stdout=open(log.with_suffix(f".shard{i}.log"), "a"),
                              stderr=subprocess.STDOUT, env=single_thread_env())
             for i, folder in enumerate(shard_dirs)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise LadderError(f"sweep shard failed (exit codes {codes}); see {log.with_suffix('.shard0.log')}")
    emergence(["harvest", "merge", str(spec), *map(str, shard_dirs), "--out", str(results)], log)


# Each analysis: its JSON file's stem -> (command, options); all run on results/ with --json.
# Intervals come from 200 bootstrap resamples per fit (the MLE predictions and FLOP multipliers
# do not depend on it): 1000 per backtest cutoff took more than 10 minutes on 2 loaded cores.
# The paper's law first; then the saturating form, because this ladder's finetuned curves
# plateau below 1 (compare_laws.json scores every form by leave-one-checkpoint-out likelihood).
BOOT = ["--n-boot", "200", "--workers", "2"]
ANALYSES: dict[str, tuple[str, list[str]]] = {
    "fit": ("fit", []),
    "backtest": ("backtest", BOOT),
    "fit_ceiling": ("fit", ["--law", "ceiling"]),
    "backtest_ceiling": ("backtest", ["--law", "ceiling", *BOOT]),
    "compare_laws": ("compare-laws", []),
}
REPORT_OPTIONS = ["--n-boot", "200", "--no-ablations", "--workers", "2"]  # the report refits: minutes, not an hour


def results_digest(results: Path) -> str:
    """sha256 of the results table's content (sorted rows), not of its file bytes."""
    import hashlib

    import polars as pl

    from fitting.schema import RESULT_KEY

    table = pl.read_parquet(results / "results.parquet").sort(RESULT_KEY)
    return hashlib.sha256(table.write_csv().encode()).hexdigest()


def _fresh(path: Path, results: Path) -> bool:
    """``path`` was computed from results with the same content (a rerun skips it)."""
    stamp = path.with_suffix(".inputs")
    return path.is_file() and stamp.is_file() and stamp.read_text() == results_digest(results)


def analyse(out: Path, say) -> dict[str, str]:
    """:data:`ANALYSES` and ``emergence report`` on the results; records what failed, never hides it."""
    log, status, results = out / "analysis.log", {}, out / "results"
    for name, (command, options) in ANALYSES.items():
        if _fresh(out / f"{name}.json", results):
            status[name] = "ok (kept from an earlier pass on the same results)"
            continue
        try:
            text = emergence([command, str(results), "--json", *options], log, capture=True)
            write_text(out / f"{name}.json", text)
            write_text(out / f"{name}.inputs", results_digest(results))
            status[name] = "ok"
        except LadderError as err:
            status[name] = str(err)
        say(f"{name}: {status[name]}")
    try:
        emergence(["report", str(results), "--out", str(out / "report"), *REPORT_OPTIONS], log)
        status["report"] = "ok: emergence report " + " ".join(REPORT_OPTIONS)
    except LadderError as err:
        status["report"] = str(err)
    say(f"report: {status['report']}")
    return status


# --------------------------------------------------------------------------- orchestration


def versions() -> dict[str, str]:
    libs = ("torch", "transformers", "tokenizers", "safetensors", "peft", "polars", "numpy", "emergence")
    out = {"python": platform.python_version()}
    for lib in libs:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "missing"
    return out


def write_manifest(out: Path, cfg: LadderConfig, command: str, walls: dict, rows: list[dict], status: dict) -> Path:
    manifest = {
        "command": command, "config": asdict(cfg), "versions": versions(),
        "seeds": {"pretrain": cfg.train.seed, "language": "corpus.LANGUAGE_SEED", "heldout": HELDOUT_SEEDS,
                  "fewshot": cfg.train.seed + 1234, "subset_seeds": list(cfg.subset_seeds)},
        "pretrain_loss": "mean nats/token on heldout_background.jsonl (background language only, shared by all sizes)",
        "wall_time_s": walls, "checkpoints": rows, "analysis": status,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    path = out / "manifest.json"
    return write_text(path, json.dumps(manifest, indent=1, default=str))


def run_ladder(out: Path, cfg: LadderConfig, *, command: str = "", say=print, analysis: bool = True) -> Path:
    """Pretrain, harvest, analyse; returns the manifest path. Reruns resume every stage."""
    unknown = [s for s in cfg.sizes if s not in SIZES]
    if unknown:
        raise LadderError(f"unknown model size {unknown[0]!r} (known: {', '.join(sorted(SIZES))})")
    out.mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    t0, walls = time.time(), {}
    write_heldout(out, cfg)
    walls["pretrain_by_size_s"] = pretrain_all(out / "models", cfg, say)
    walls["pretrain_s"] = round(time.time() - t0, 1)
    rows = checkpoint_rows(out / "models", cfg)
    walls["pretrain_logged_s"] = logged_pretrain_seconds(rows)
    spec = write_spec(out, rows, cfg)
    walls.update(harvest(out, spec, cfg, say))
    status = analyse(out, say) if analysis else {}
    walls["total_s"] = round(time.time() - t0, 1)
    return write_manifest(out, cfg, command, walls, rows, status)


def config_from_dict(changes: dict, base: LadderConfig | None = None, *, where: str = "config") -> LadderConfig:
    """``base`` (default: the shipped ladder) with the fields of ``changes`` replaced: the shape of a
    manifest's ``"config"``, any subset of it; ``train`` and ``corpus`` may themselves be partial.
    Each value must have its default's type (an int may stand for a float; lists become tuples)."""
    base = base or LadderConfig()
    out = {}
    for key, value in changes.items():
        if key in ("train", "corpus"):
            sub = getattr(base, key)
            if not isinstance(value, dict):
                raise LadderError(f"{where}: {key} must be an object of {type(sub).__name__} fields")
            if "task_weights" in value and isinstance(value["task_weights"], list):
                value = {**value, "task_weights": [tuple(tw) for tw in value["task_weights"]]}
            try:
                out[key] = replace(sub, **_checked(value, asdict(sub), f"{where}: {key}."))
            except ValueError as err:  # a value of the right type the dataclass refuses
                raise LadderError(f"{where}: {key}: {err}") from None
        else:
            out.update(_checked({key: value}, asdict(base), f"{where}: "))
    return replace(base, **out)


def _checked(changes: dict, defaults: dict, where: str) -> dict:
    """``changes`` with lists as tuples, after checking each name and type against ``defaults``."""
    out = {}
    for key, value in changes.items():
        if key not in defaults:
            raise LadderError(f"{where}{key}: unknown field (known: {', '.join(defaults)})")
        default = defaults[key]
        value = tuple(value) if isinstance(value, list) and isinstance(default, tuple) else value
        ok = isinstance(value, type(default)) or (isinstance(default, float) and type(value) is int)
        if not ok or isinstance(value, bool) is not isinstance(default, bool):
            raise LadderError(f"{where}{key}: expected {type(default).__name__}, got {value!r}")
        out[key] = value
    return out


def load_config(path: Path) -> LadderConfig:
    """A ladder config from a JSON file (a manifest's ``"config"`` object, or the whole manifest)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LadderError(f"{path}: not a readable JSON ladder config ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise LadderError(f"{path}: a ladder config is a JSON object of LadderConfig fields")
    return config_from_dict(data, where=str(path))
