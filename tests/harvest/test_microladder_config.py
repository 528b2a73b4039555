"""Ladder configs from JSON: the shipped alternatives reproduce the ladders they name, and a bad
file is one line, exit 2, before anything is trained."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from harvest.microladder.run import LadderConfig, LadderError, config_from_dict, load_config, quick_config
from tests.cli_runner import run_cli

CONFIGS = Path(__file__).resolve().parents[2] / "harvest" / "microladder" / "configs"


def test_a_manifest_reloads_to_the_config_that_wrote_it(tmp_path):
    cfg = quick_config()
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"command": "x", "config": asdict(cfg)}))
    assert load_config(path) == cfg


def test_partial_config_changes_only_what_it_names():
    cfg = config_from_dict({"corpus": {"task_weights": [["copy", 1.0], ["topic", 1.0]]},
                            "train": {"steps": 300}, "data_levels": [4, 16]})
    base = LadderConfig()
    assert cfg.corpus.task_weights == (("copy", 1.0), ("topic", 1.0))
    assert cfg.train.steps == 300 and cfg.train.n_checkpoints == base.train.n_checkpoints
    assert cfg.data_levels == (4, 16) and cfg.sizes == base.sizes and cfg.recipe == base.recipe


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.json")))
def test_shipped_alternative_configs_load_and_differ_from_the_default(name):
    assert load_config(CONFIGS / name) != LadderConfig()


@pytest.mark.parametrize("text, message", [
    ('{"sizes": ["w3"], "colour": 1}', "colour: unknown field"),
    ('{"train": {"stepz": 10}}', "train.stepz: unknown field"),
    ('{"train": 10}', "train must be an object"),
    ('{"train": {"steps": "many"}}', "train.steps: expected int, got 'many'"),
    ('{"sweep": 1}', "sweep: expected bool, got 1"),
    ('{"data_levels": 8}', "data_levels: expected tuple, got 8"),
    ('{"corpus": {"topic_shared_head": 5000}}', "topic_shared_head must be an integer in [0, 4096)"),
    ('{"corpus": {"topic_shared_head": -1}}', "topic_shared_head must be an integer in [0, 4096)"),
    ("not json", "not a readable JSON ladder config"),
    ("[1, 2]", "a ladder config is a JSON object"),
])
def test_bad_config_is_one_line_exit_2_and_nothing_is_made(tmp_path, capsys, text, message):
    path, out = tmp_path / "ladder.json", tmp_path / "run"
    path.write_text(text)
    with pytest.raises(LadderError, match=re.escape(message)):
        load_config(path)
    code, _, err = run_cli(["harvest", "microladder", "--out", out, "--config", path], capsys)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_quick_and_config_together_are_refused(tmp_path, capsys):
    path, out = tmp_path / "ladder.json", tmp_path / "run"
    path.write_text("{}")
    code, _, err = run_cli(["harvest", "microladder", "--out", out, "--quick", "--config", path], capsys)
    assert code == 2 and "give --quick or --config, not both" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_int_may_stand_for_a_float_setting():
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1


def test_a_clustered_language_reaches_the_harvest_spec(tmp_path):
    """The topic tasks of the harvest spec get the language the models were pretrained on
    (a checkpoint evaluated on the other language would be scored on topics it never saw)."""
    import tomllib

    from harvest.microladder.run import write_spec

    cfg = config_from_dict({"corpus": {"topic_shared_head": 32}, "sweep": False})
    spec = tomllib.loads(write_spec(tmp_path, [], cfg).read_text())
    options = {t["task"]: t["options"] for t in spec["tasks"]}
    assert options["ml_topic"]["shared_head"] == 32 and options["ml_topic_short"]["shared_head"] == 32
    assert "shared_head" not in options["ml_copy"]
    plain = tomllib.loads(write_spec(tmp_path, [], LadderConfig(sweep=False)).read_text())
    assert all("shared_head" not in t["options"] for t in plain["tasks"])


def test_the_ladder_tasks_import_first_and_are_registered():
    """Importing the ladder's tasks before the registry used to fail (a circular from-import);
    the registry's entries for them are the classes of harvest.microladder.tasks."""
    import subprocess
    import sys

    code = ("from harvest.microladder.tasks import LANGUAGE_TASKS, MICROLADDER_TASKS\n"
            "from harvest.tasks import TASK_CLASSES, task_class\n"
            "assert LANGUAGE_TASKS == {'ml_topic', 'ml_topic_short'} and LANGUAGE_TASKS <= set(TASK_CLASSES)\n"
            "assert all(task_class(c.name) is c for c in MICROLADDER_TASKS)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
