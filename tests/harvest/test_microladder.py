"""The micro-ladder: corpus and tokenizer properties, resumable pretraining, and a reduced
end-to-end run (tiny sizes, few steps) through the real harvest commands.

The reduced run checks the pipeline and the table schema, not emergence: at this size nothing
emerges reliably (see docs/microladder.md for the full run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from harvest.microladder import corpus as C  # noqa: E402
from harvest.microladder.pretrain import TrainConfig, train  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


# --------------------------------------------------------------------------- corpus


@pytest.mark.parametrize("task", C.TASKS)
def test_episode_answer_is_the_true_continuation(task):
    rng = np.random.default_rng(0)
    for _ in range(50):
        ep = C.episode(task, rng)
        assert ep.answer in ep.choices and len(set(ep.choices)) == 4
        toks = ep.tokens
        if task == "copy":  # "# s # s #": second half repeats the first
            m = (len(toks) - 3) // 2
            assert toks[1:1 + m] == toks[2 + m:2 + 2 * m]
        elif task == "reverse":
            m = (len(toks) - 3) // 2
            assert toks[1:1 + m][::-1] == toks[2 + m:2 + 2 * m]
        elif task == "recall":
            pairs = dict(zip(toks[1:-3:2], toks[2:-3:2]))
            assert pairs[toks[-3]] == ep.answer
        elif task == "topic":  # "{ phrases of topic T = tT }": the label names the segment's topic
            assert toks[0] == "{" and toks[-3:] == ["=", ep.answer, "}"] and set(ep.choices) <= set(C.LABELS)
            assert np.isfinite(_segment_loglik(toks[1:-3])[int(ep.answer[1:])])
        else:
            a, b = int(toks[0][1:]), int(toks[2][1:])
            assert ep.answer == f"n{(a + b) % 10}"


def _segment_loglik(words: list[str], shared_head: int = 0) -> np.ndarray:
    """log P(words | topic) for every topic, summed over every split of ``words`` into phrases
    (the forward algorithm); -inf where the words are no sequence of that topic's phrases."""
    bg = C.background(shared_head)
    ids_of: dict[tuple, list[int]] = {}
    for i, p in enumerate(bg.phrases):
        ids_of.setdefault(tuple(p), []).append(i)
    with np.errstate(divide="ignore"):
        forward = [np.zeros(C.N_TOPICS)] + [np.full(C.N_TOPICS, -np.inf)] * len(words)
        for end in range(1, len(words) + 1):
            terms = [forward[end - n] + np.log(bg.topic_p[:, ids_of[tuple(words[end - n:end])]].sum(axis=1))
                     for n in range(2, 7) if end >= n and tuple(words[end - n:end]) in ids_of]
            if terms:
                forward[end] = np.logaddexp.reduce(terms, axis=0)
    return forward[-1]


def test_topic_segments_carry_evidence_of_their_topic():
    """The Bayes classifier that knows the language names a long segment's topic (4-way, as
    the task asks) nearly always, a short one less often: the task is solvable from the
    background language's statistics, and the short variant is harder."""
    rng = np.random.default_rng(0)

    def bayes_accuracy(segment: str, n: int = 200) -> float:
        hits = 0
        for _ in range(n):
            ep = C.episode("topic", rng, segment=segment)
            loglik, choices = _segment_loglik(ep.prompt[1:-1]), [int(c[1:]) for c in ep.choices]
            hits += ep.choices[int(np.argmax(loglik[choices]))] == ep.answer
        return hits / n

    long, short = bayes_accuracy("long"), bayes_accuracy("short")
    assert long > 0.95 and 0.5 < short < long


def test_clustered_topics_share_their_head_and_differ_below_it():
    """``shared_head`` H: a cluster's topics give the same H phrases the same probabilities,
    and differ (each its own ranking) below them; clusters still differ everywhere."""
    head = 32
    p = C.background(head).topic_p
    for first in range(0, C.N_TOPICS, C.CLUSTER_SIZE):
        top = np.argsort(-p[first])[:head]
        for t in range(first + 1, first + C.CLUSTER_SIZE):
            assert np.array_equal(p[t, top], p[first, top])
            assert set(np.argsort(-p[t])[:head]) == set(top)
            tail_first, tail_t = np.argsort(-p[first])[head:head + 50], np.argsort(-p[t])[head:head + 50]
            assert len(set(tail_first) & set(tail_t)) < 10  # own tails
    assert len(set(np.argsort(-p[0])[:head]) & set(np.argsort(-p[C.CLUSTER_SIZE])[:head])) < head // 2
    assert np.array_equal(C.background(0).topic_p, C.Background(C.LANGUAGE_SEED).topic_p)


def test_clustered_topic_episodes_ask_within_the_cluster_and_stay_solvable():
    """In a clustered language the distractors are the answer's cluster-mates, and the Bayes
    classifier that knows the language still names the topic well above chance, though less
    often than without clusters: the task asks for tail knowledge, and that knowledge suffices."""
    head, rng, hits, n = 32, np.random.default_rng(1), 0, 200
    for _ in range(n):
        ep = C.episode("topic", rng, segment="long", shared_head=head)
        first = int(ep.answer[1:]) // C.CLUSTER_SIZE * C.CLUSTER_SIZE
        assert sorted(ep.choices) == sorted(C.LABELS[first:first + C.CLUSTER_SIZE])
        loglik, choices = _segment_loglik(ep.prompt[1:-1], head), [int(c[1:]) for c in ep.choices]
        hits += ep.choices[int(np.argmax(loglik[choices]))] == ep.answer
    assert 0.5 < hits / n < 0.99


def test_corpus_and_tasks_speak_the_clustered_language():
    """``CorpusConfig.topic_shared_head`` reaches the corpus's topic blocks, and the harvest task
    takes the same language as an option (validated; recorded in its description)."""
    from emergence.errors import SpecError
    from harvest.tasks import get_task

    corpus = C.Corpus(C.CorpusConfig(task_weights=(("topic", 1.0),), topic_shared_head=32))
    assert corpus.background is C.background(32)
    doc = corpus.document(np.random.default_rng(0))
    labels = [t for t in doc if t in C.LABELS]
    assert labels
    task = get_task("ml_topic", shared_head=32, n_test=20)
    assert task.describe()["shared_head"] == 32 and "shared_head" not in get_task("ml_topic", n_test=20).describe()
    for doc in task.docs("test"):
        first = int(doc["choices"][doc["answer"]][1:]) // C.CLUSTER_SIZE * C.CLUSTER_SIZE
        assert sorted(doc["choices"]) == sorted(C.LABELS[first:first + C.CLUSTER_SIZE])
    for bad in (-1, 4096, 2.5, True):
        with pytest.raises(SpecError, match="shared_head"):
            get_task("ml_topic", shared_head=bad)
    with pytest.raises(SpecError, match="shared_head"):
        get_task("ml_copy", shared_head=32)  # only the topic tasks speak a language


def test_topic_segments_draw_what_rng_choice_would():
    """``Background.segment`` searches a precomputed CDF instead of calling ``rng.choice(p=...)``:
    the same phrases from the same generator state, so the corpus (and trained models) did not
    change with the speed-up."""
    bg = C.Background()
    for seed in range(20):
        fast, slow = np.random.default_rng(seed), np.random.default_rng(seed)
        topic = seed % C.N_TOPICS
        expected: list[str] = []
        while len(expected) < 12:
            expected.extend(bg.phrases[slow.choice(C.N_PHRASES, p=bg.topic_p[topic])])
        assert bg.segment(fast, topic, 12) == expected


def test_a_block_longer_than_a_document_keeps_whole_episodes():
    """Six long topic episodes can outgrow a 127-token document (it crashed a pretraining run):
    the block keeps the episodes that fit, and the document keeps its length."""
    corpus = C.Corpus(C.CorpusConfig(task_weights=(("topic", 1.0),), max_block_episodes=40))
    rng = np.random.default_rng(0)
    for _ in range(50):
        doc = corpus.document(rng)
        assert len(doc) == C.SEQ_LEN - 1 and doc.count("{") == doc.count("}") > 0


def test_documents_have_fixed_length_and_known_tokens():
    corpus = C.Corpus()
    ids = corpus.batch_ids(np.random.default_rng(1), 8)
    assert ids.shape == (8, C.SEQ_LEN) and (ids[:, 0] == C.BOS_ID).all()
    assert ids.max() < len(C.vocabulary()) and (ids[:, 1:] != C.TOKEN_ID["<unk>"]).all()


def test_tokenizer_matches_corpus_ids_and_round_trips(tmp_path):
    from transformers import AutoTokenizer

    from harvest.microladder.tokenizer import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "# w5 w9 # w5 w9 # k3 n7 + = ?"
    ids = tok(text)["input_ids"]
    assert ids == [C.BOS_ID] + [C.TOKEN_ID[t] for t in text.split()]
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_fewshot_prompt_is_a_corpus_task_block():
    from harvest.tasks import get_task
    from harvest.tasks.fewshot import build_items

    task = get_task("ml_copy", None, n_train=20, n_test=3)
    rows = [(d["id"], d) for d in task.docs("test")]
    item = build_items(task, rows, task.docs("train"), 2, 1234, False)[0]
    words = item.context.split()  # whitespace (incl. the "\n\n" shot delimiter) is not a token
    assert words.count("#") == 2 * 3 + 2  # two whole episodes, then the query's two markers
    prompt, target = task.train_examples()[0]
    assert target == " " + task.docs("train")[0]["choices"][task.docs("train")[0]["answer"]]
    assert task.chance == 0.25


def test_checkpoint_steps_are_log_spaced_and_end_at_the_last_step():
    steps = TrainConfig(steps=1500, first_checkpoint=40, n_checkpoints=10).checkpoint_steps()
    assert len(steps) == 10 and steps[0] == 40 and steps[-1] == 1500
    ratios = np.diff(np.log(steps))
    assert np.allclose(ratios, ratios.mean(), atol=0.02)


# --------------------------------------------------------------------------- pretraining


def _weights(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_killed_pretraining_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from harvest.microladder import pretrain

    cfg = TrainConfig(size="t0", steps=6, first_checkpoint=2, n_checkpoints=3, batch_size=2, heldout_docs=2, log_every=100)
    train(cfg, tmp_path / "straight")

    class Killed(Exception):
        pass

    real_log = pretrain.log_line

    def dying_log(path, record):
        real_log(path, record)
        if record.get("checkpoint") == "step_000003":  # after the checkpoint and resume state are saved
            raise Killed

    monkeypatch.setattr(pretrain, "log_line", dying_log)
    with pytest.raises(Killed):
        train(cfg, tmp_path / "resumed")
    monkeypatch.setattr(pretrain, "log_line", real_log)
    train(cfg, tmp_path / "resumed")
    a, b = _weights(tmp_path / "straight" / "step_000006"), _weights(tmp_path / "resumed" / "step_000006")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.harvest
def test_quick_ladder_end_to_end(tmp_path):
    """`emergence harvest microladder --quick`: pretrain, real harvest eval + sweep, valid tables."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fitting.schema import load_results

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    exe = Path(sys.executable).with_name("emergence")
    out, ship = tmp_path / "run", tmp_path / "ship"
    proc = subprocess.run([str(exe), "harvest", "microladder", "--out", str(out), "--quick", "--no-analysis",
                           "--ship", str(ship)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]

    folder = load_results(ship, items=True)  # validates the data contract
    ck, res, items = folder.checkpoints, folder.results, folder.items
    assert sorted(ck["family"].unique()) == ["microladder-t0", "microladder-t1"]
    for fam in ck.partition_by("family"):
        assert fam.height == 3
        assert fam.sort("tokens")["pretrain_loss"].is_sorted(descending=True)  # training lowers held-out loss
    assert sorted(res["task"].unique()) == ["ml_copy", "ml_topic"]
    assert set(res["setting"]) == {"few_shot", "finetune"} and (res["chance"] == 0.25).all()
    assert sorted(res.filter(res["setting"] == "finetune")["n_train"].unique()) == [4, 16]
    # few-shot: 6 checkpoints x 2 tasks; finetune: every 2nd checkpoint (2 per size) x 2 tasks x 2 levels
    assert res.height == 6 * 2 + 4 * 2 * 2
    assert items.height == res.height * 40 and items["choice_logprobs"].list.len().unique().to_list() == [4]

    manifest = json.loads((ship / "manifest.json").read_text())
    assert {"command", "versions", "seeds", "wall_time_s"} <= set(manifest)
    assert manifest["versions"]["torch"] and manifest["wall_time_s"]["total_s"] > 0

    first = out / "models" / "t0" / "step_000020"  # a checkpoint loads offline as plain HF
    model, tok = AutoModelForCausalLM.from_pretrained(first), AutoTokenizer.from_pretrained(first)
    assert type(model).__name__ == "LlamaForCausalLM" and tok("# w1")["input_ids"][0] == C.BOS_ID
