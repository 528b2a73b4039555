"""A task given as an lm-evaluation-harness task YAML (the common fields), spec option ``yaml``.

    [[tasks]]
    task = "lm_eval_yaml"
    options = { yaml = "tasks/my_task.yaml" }   # relative to the spec file
    data = "fixtures/my_task"                   # optional: local rows, else the YAML's dataset_path

Supported: ``dataset_path``, ``dataset_name``, ``test_split`` / ``validation_split`` (scored: the
test split if given), ``fewshot_split`` (else ``training_split``, else the scored split),
``training_split`` (finetuning), ``output_type`` ``multiple_choice`` or ``generate_until``,
``doc_to_text`` / ``doc_to_target`` / ``doc_to_choice`` (a field name, a Jinja2 template rendered
as lm-eval renders it, or for choices a list), ``description`` (a template, before the shots),
``generation_kwargs`` (``until``, ``max_gen_toks``; greedy only), ``num_fewshot`` (the default
shots), ``metric_list`` (``acc`` -> ``accuracy``, ``exact_match`` -> ``exact_match`` with its
``ignore_case`` / ``ignore_punctuation`` / ``regexes_to_ignore``), ``filter_list`` of
``take_first`` only, and the labels ``task``, ``task_alias``, ``tag``, ``group``, ``metadata``.
Anything else that could change what is scored (``!function``, ``include``, ``process_docs``,
other filters or metrics, ``fewshot_config``, ``use_prompt``, a ``target_delimiter`` other than
" " or a ``fewshot_delimiter`` other than "\\n\\n", which the prompt builder does not vary, ...)
is refused with one line naming the field and the file, when the spec is read.

Size: one cohesive thing, the supported subset of lm-eval's YAML and its refusals; splitting the
reading from the checks would put the list of supported fields in two places.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import re
import string
from pathlib import Path
from typing import Any

from emergence.errors import SpecError
from harvest.tasks.base import FEWSHOT_DELIMITER, TARGET_DELIMITER, Doc, Task
from harvest.tasks.data import TaskData
from harvest.tasks.metrics import ACCURACY, EXACT_MATCH, Metric

LABELS = {"task", "task_alias", "tag", "group", "metadata", "should_decontaminate",
          "doc_to_decontamination_query"}
FIELDS = {"dataset_path", "dataset_name", "test_split", "validation_split", "fewshot_split", "training_split",
          "output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "target_delimiter",
          "fewshot_delimiter", "description", "generation_kwargs", "num_fewshot", "metric_list",
          "filter_list", "repeats"}
WHY = {"include": "includes another YAML", "process_docs": "rewrites the rows",
       "process_results": "scores with its own code", "fewshot_config": "changes how shots are drawn",
       "use_prompt": "takes a promptsource prompt", "class": "is a Python task class",
       "dataset_kwargs": "changes how the dataset loads", "gen_prefix": "changes the prompt"}
GENERATION_KEYS = {"until", "max_gen_toks", "do_sample", "temperature"}
METRIC_KEYS = {"metric", "aggregation", "higher_is_better", "ignore_case", "ignore_punctuation",
               "regexes_to_ignore"}


class _Function:
    """A ``!function`` tag (Python code lm-eval would import): kept only to be refused."""

    def __init__(self, name: str):
        self.name = name


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: _Function(str(loader.construct_scalar(node))))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError(f"lm-eval YAML {path}: cannot read ({err.strerror or err})") from None
    try:
        config = yaml.load(text, Loader=Loader)
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecError(f"lm-eval YAML {path}: not valid YAML ({first})") from None
    if not isinstance(config, dict):
        raise SpecError(f"lm-eval YAML {path}: must be a mapping of task fields")
    return config


def _find_function(value: Any, where: str) -> str | None:
    if isinstance(value, _Function):
        return where
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find_function(v, f"{where}.{k}")
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _find_function(v, f"{where}[{i}]")
            if found:
                return found
    return None


def _environment():
    try:
        from jinja2 import BaseLoader, Environment, StrictUndefined
    except ImportError:
        from emergence.errors import MissingExtraError

        raise MissingExtraError("jinja2", "parity") from None
    env = Environment(loader=BaseLoader, undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters["regex_replace"] = lambda s, pattern, repl, count=0: re.sub(pattern, repl, s, count=count)
    return env


def _format_hash(owner) -> str:
    """The class's hash (its generic prompt_format), or a built task's: of its YAML's content."""
    text = "\x1f".join([owner.name, owner.version, owner.yaml_sha256 or owner.prompt_format,
                        TARGET_DELIMITER, FEWSHOT_DELIMITER])
    return hashlib.sha256(text.encode()).hexdigest()


class _ClassOrInstance:
    """A method bound to the instance when there is one, else to the class."""

    def __init__(self, func):
        self.func = func

    def __get__(self, obj, cls):
        return functools.partial(self.func, cls if obj is None else obj)


class LmEvalYaml(Task):
    """One lm-eval task YAML as a task (see the module docstring for the fields it reads)."""

    name = "lm_eval_yaml"
    version = "1"
    yaml_sha256 = ""  # set per YAML
    prompt_format = "lm-eval task YAML (doc_to_text / doc_to_target / doc_to_choice as Jinja2 templates)"

    def __init__(self, data: TaskData | None = None, *, yaml: str | None = None, **options: Any):
        if yaml is None:
            raise TypeError("option yaml (the lm-eval task YAML's path) is required")
        self.yaml_path = Path(str(yaml)).expanduser()
        super().__init__(data, **options)
        self.config = config = _load_yaml(self.yaml_path)
        self._check(config)
        self.lm_eval_task = config.get("task")
        self.hub_dataset = config.get("dataset_path")
        self.hub_config = config.get("dataset_name")
        self.kind = "multiple_choice" if config["output_type"] == "multiple_choice" else "generation"
        test, valid, train = config.get("test_split"), config.get("validation_split"), config.get("training_split")
        if test is None and valid is None:
            self._refuse("test_split", "neither test_split nor validation_split is given (nothing to score)")
        self.eval_split = test or valid
        self.fewshot_split = config.get("fewshot_split") or train or valid or test
        self.train_split = train or self.fewshot_split
        # lm-eval passes the eval row to its sampler when fewshot_split == test_split (None == None too)
        self.fewshot_draws_extra = config.get("fewshot_split") == test
        self.default_shots = int(config.get("num_fewshot") or 0)
        gen = config.get("generation_kwargs") or {}
        until = gen.get("until", [FEWSHOT_DELIMITER])
        if self.kind == "generation":
            self.stop = tuple([until] if isinstance(until, str) else until)
        self.max_new_tokens = int(gen.get("max_gen_toks", 256))
        self._env = _environment()
        self._templates: dict[str, Any] = {}
        canonical = json.dumps(config, sort_keys=True, default=str)
        self.yaml_sha256 = hashlib.sha256(canonical.encode()).hexdigest()
        self.prompt_format = f"lm-eval YAML {self.yaml_path.name} (sha256 {self.yaml_sha256[:12]})"

    # --- checking the YAML
    def _refuse(self, field: str, why: str):
        raise SpecError(f"lm-eval YAML {self.yaml_path}: {field}: {why}")

    def _check(self, config: dict[str, Any]) -> None:
        for key, value in config.items():
            found = _find_function(value, key)
            if found:
                self._refuse(found, "!function (Python code) is not supported; give the field as a template")
        for key in config:
            if key in WHY:
                self._refuse(key, f"not supported ({WHY[key]})")
            if key not in FIELDS | LABELS:
                self._refuse(key, "not supported (it could change what is scored)")
        output = config.get("output_type", "generate_until")
        if output not in ("multiple_choice", "generate_until"):
            self._refuse("output_type", f"{output!r} not supported (multiple_choice or generate_until)")
        config["output_type"] = output
        for key in ("doc_to_text", "doc_to_target"):
            if not isinstance(config.get(key), (str, int)) or isinstance(config.get(key), bool):
                self._refuse(key, "must be given as a field name or a template")
        choice = config.get("doc_to_choice")
        if output == "multiple_choice" and not isinstance(choice, (str, list)):
            self._refuse("doc_to_choice", "a multiple_choice task needs a list, a field name or a template")
        if output == "generate_until" and choice is not None:
            self._refuse("doc_to_choice", "not used by generate_until (remove it)")
        if config.get("target_delimiter", TARGET_DELIMITER) != TARGET_DELIMITER:
            self._refuse("target_delimiter", f"only {TARGET_DELIMITER!r} is supported")
        if config.get("fewshot_delimiter", FEWSHOT_DELIMITER) != FEWSHOT_DELIMITER:
            self._refuse("fewshot_delimiter", f"only {FEWSHOT_DELIMITER!r} is supported")
        if config.get("repeats", 1) != 1:
            self._refuse("repeats", "only 1 is supported")
        for key in ("test_split", "validation_split", "fewshot_split", "training_split", "dataset_path",
                    "dataset_name", "description"):
            if config.get(key) is not None and not isinstance(config[key], str):
                self._refuse(key, "must be a string")
        if config.get("num_fewshot") is not None and (not isinstance(config["num_fewshot"], int)
                                                      or config["num_fewshot"] < 0):
            self._refuse("num_fewshot", "must be a whole number >= 0")
        gen = config.get("generation_kwargs")
        if gen is not None:
            if output != "generate_until":
                self._refuse("generation_kwargs", "only for generate_until")
            if not isinstance(gen, dict):
                self._refuse("generation_kwargs", "must be a mapping")
            for key in gen:
                if key not in GENERATION_KEYS:
                    self._refuse(f"generation_kwargs.{key}", "not supported (generation is greedy)")
            if gen.get("do_sample") or gen.get("temperature", 0):
                self._refuse("generation_kwargs", "sampling is not supported (generation is greedy)")
            until = gen.get("until", [])
            if not (isinstance(until, str) or (isinstance(until, list) and all(isinstance(u, str) for u in until))):
                self._refuse("generation_kwargs.until", "must be a string or a list of strings")
            if "max_gen_toks" in gen and (not isinstance(gen["max_gen_toks"], int) or gen["max_gen_toks"] < 1):
                self._refuse("generation_kwargs.max_gen_toks", "must be a whole number >= 1")
        for i, f in enumerate(config.get("filter_list") or []):
            steps = f.get("filter") if isinstance(f, dict) else None
            if not isinstance(steps, list) or any(not isinstance(s, dict) or s.get("function") != "take_first"
                                                  for s in steps):
                self._refuse(f"filter_list[{i}]", "filters other than take_first are not supported")
        if len(config.get("filter_list") or []) > 1:
            self._refuse("filter_list", "one filter only")
        metrics = config.get("metric_list")
        if metrics is None:
            metrics = [{"metric": "acc" if output == "multiple_choice" else "exact_match"}]
        if not isinstance(metrics, list) or not metrics:
            self._refuse("metric_list", "must be a non-empty list")
        allowed = "acc" if output == "multiple_choice" else "exact_match"
        for i, m in enumerate(metrics):
            name = m.get("metric") if isinstance(m, dict) else None
            if name != allowed:
                self._refuse(f"metric_list[{i}]", f"metric {name!r} not supported for {output} (only {allowed!r})")
            for key in m:
                if key not in METRIC_KEYS:
                    self._refuse(f"metric_list[{i}].{key}", "not supported")
            if m.get("aggregation", "mean") != "mean":
                self._refuse(f"metric_list[{i}].aggregation", "only mean is supported")
        if len(metrics) > 1:
            self._refuse("metric_list", "one metric only")
        self._metric = dict(metrics[0])

    # --- rendering, as lm-eval's ConfigurableTask does
    def _render(self, field: str, doc: Doc) -> str:
        template = self._templates.get(field)
        if template is None:
            template = self._templates[field] = self._env.from_string(field)
        try:
            return template.render(**doc)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SpecError(f"lm-eval YAML {self.yaml_path}: cannot render {field!r} ({first})") from None

    def _resolve(self, key: str, doc: Doc) -> Any:
        value = self.config[key]
        if isinstance(value, int) or isinstance(value, list):
            return value
        if value in doc:
            return doc[value]
        text = self._render(value, doc)
        if key == "doc_to_choice":
            try:
                return ast.literal_eval(text)
            except (SyntaxError, ValueError):
                self._refuse("doc_to_choice", f"template did not give a list ({text[:60]!r})")
        if text.isdigit() and self.config.get("doc_to_choice") is not None:
            return ast.literal_eval(text)
        if key == "doc_to_target" and len(text) >= 2 and text[0] == "[" and text[-1] == "]":
            try:
                return ast.literal_eval(text)
            except (SyntaxError, ValueError):
                return text
        return text

    def prefix(self, doc: Doc) -> str:
        description = self.config.get("description")
        if not description:
            return ""
        return str(doc[description]) if description in doc else self._render(description, doc)

    def doc_to_text(self, doc: Doc) -> str:
        text = self._resolve("doc_to_text", doc)
        if not isinstance(text, str):
            self._refuse("doc_to_text", "gives a choice index (several contexts per row); not supported")
        return text

    def target(self, doc: Doc) -> str:
        if self.kind == "multiple_choice":
            return self.choices(doc)[self.gold(doc)]
        target = self._resolve("doc_to_target", doc)
        if isinstance(target, list):
            target = target[0]
        return str(target)

    # --- scoring
    def choices(self, doc: Doc) -> list[str]:
        if self.kind != "multiple_choice":
            return super().choices(doc)
        return [str(c) for c in self._resolve("doc_to_choice", doc)]

    def gold(self, doc: Doc) -> int:
        if self.kind != "multiple_choice":
            return super().gold(doc)
        target = self._resolve("doc_to_target", doc)
        if isinstance(target, str):
            choices = self.choices(doc)
            if target not in choices:
                self._refuse("doc_to_target", f"{target!r} is not one of the choices {choices}")
            return choices.index(target)
        if isinstance(target, list):
            self._refuse("doc_to_target", "several gold answers are not supported")
        return int(target)

    @property
    def chance(self) -> float:
        if self.kind != "multiple_choice":
            return 0.0
        choice = self.config["doc_to_choice"]
        if isinstance(choice, list):
            return 1.0 / len(choice)
        docs = self.docs(self.eval_split)
        return sum(1.0 / len(self.choices(d)) for d in docs) / len(docs) if docs else 0.0

    def metrics(self) -> tuple[Metric, ...]:
        if self.kind == "multiple_choice":
            return (Metric(ACCURACY, self.chance, lm_eval="acc"),)
        return (Metric(EXACT_MATCH, 0.0, lm_eval="exact_match"),)

    def _normalise(self, text: str) -> str:
        """lm-eval's exact_match: regexes_to_ignore removed, then case and punctuation if asked."""
        for pattern in self._metric.get("regexes_to_ignore") or ():
            text = re.sub(pattern, "", text)
        if self._metric.get("ignore_case"):
            text = text.lower()
        if self._metric.get("ignore_punctuation"):
            text = text.translate(str.maketrans("", "", string.punctuation))
        return text

    def gold_label(self, doc: Doc) -> str:
        if self.kind == "multiple_choice":
            return str(self.gold(doc))
        return self._normalise(self.target(doc))

    def score_generation(self, doc: Doc, text: str) -> dict[str, tuple[str, bool]]:
        return {EXACT_MATCH: (text, self._normalise(text) == self._normalise(self.target(doc)))}

    # --- provenance
    format_hash = _ClassOrInstance(_format_hash)  # type: ignore[assignment]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "yaml": str(self.yaml_path), "yaml_sha256": self.yaml_sha256}
