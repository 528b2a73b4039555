"""A synthetic corpus: a background language with Zipfian phrases, and task episodes.

Every document is ``SEQ_LEN`` tokens: ``<s>`` then background text, and with probability
``task_rate`` a *task block* (1–6 episodes of one task, back to back) spliced in at a random
position. Few-shot prompts are task blocks too, so demonstrations are in-distribution.

Background language (why it keeps being learned): ``N_TOPICS`` topics, each a Zipfian
distribution (exponent 1.1) over a shared pool of ``N_PHRASES`` fixed phrases of 2–6 words.
A model lowers its loss by memorising phrases (a long Zipfian tail: bigger models and longer
training keep memorising more) and by inferring the topic from context; neither saturates
within the micro-ladder's budget.

Topic clusters (``shared_head`` > 0): the topics come in clusters of ``CLUSTER_SIZE`` that share
their ``shared_head`` most frequent phrases (same phrases, same ranks) and differ only below
them. Telling a cluster's topics apart then takes knowledge of their tails, which a model
gains only as its loss keeps falling; topic episodes draw their distractors from the answer's
cluster. ``shared_head = 0`` is the original language: every topic its own permutation.

Task episodes (content letters a0..a31 drawn uniformly, never used by the background, so
background statistics cannot predict them; a pilot with 192 content words saw nothing emerge
by step 730 in a 64-wide model, a 32-letter alphabet is what its copying circuit can resolve):

    copy     ``# a5 a9 a2 # a5 a9 a2 #``           answer: the next letter of the copy
    recall   ``| k3 a5 k7 a9 k1 a2 ? k7 a9 |``     answer: the letter bound to the asked key
    arith    ``n3 + n5 = n8 ;``                    answer: the sum mod 10 (a memorised table)
    reverse  ``< a5 a9 a2 > a2 a9 a5 >``           answer: the next letter of the reversal

All randomness comes from ``numpy.random.Generator`` objects seeded by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np

SEQ_LEN = 128  # tokens per pretraining document, <s> included
N_WORDS = 192  # background words w0..w191
N_LETTERS = 32  # task content a0..a31 (copy, recall, reverse): few enough for a 32-wide model to copy
N_KEYS = 16  # recall keys k0..k15
N_NUMBERS = 10  # arith digits n0..n9 (addition mod 10)
N_TOPICS = 16
CLUSTER_SIZE = 4  # topics per cluster when the language has clusters (shared_head > 0)
N_PHRASES = 4096
ZIPF_EXPONENT = 1.1
LANGUAGE_SEED = 1234  # fixes the phrase pool and topics: the language itself

SPECIALS = ["<unk>", "<s>", "</s>"]
PUNCT = ["#", "|", "?", "+", "=", ";", "<", ">"]
TOPIC_PUNCT = ["{", "}"]  # appended after the older tokens, so their ids do not move
LABELS = [f"t{i}" for i in range(N_TOPICS)]  # topic labels, used only by topic episodes
TASKS = ("copy", "recall", "arith", "reverse", "topic")
# Segment lengths (tokens, whole phrases) of topic episodes: the corpus mixes short and long
# segments; the two harvest tasks fix one range each (less evidence, lower accuracy).
TOPIC_SEGMENT = {"corpus": (3, 16), "long": (12, 16), "short": (3, 5)}


def vocabulary() -> list[str]:
    """All tokens, in id order."""
    words = [f"w{i}" for i in range(N_WORDS)]
    keys = [f"k{i}" for i in range(N_KEYS)]
    numbers = [f"n{i}" for i in range(N_NUMBERS)]
    letters = [f"a{i}" for i in range(N_LETTERS)]
    return SPECIALS + PUNCT + words + keys + numbers + letters + TOPIC_PUNCT + LABELS


TOKEN_ID = {tok: i for i, tok in enumerate(vocabulary())}
BOS_ID = TOKEN_ID["<s>"]


@dataclass(frozen=True)
class Episode:
    """One task episode split where the answer starts: ``prompt`` ends right before ``answer``.

    ``choices`` holds the answer and its distractors (``answer`` is one of them); ``tail`` is
    what follows the answer in the full episode, so ``prompt + answer + tail`` is the episode.
    """

    task: str
    prompt: list[str]
    answer: str
    choices: list[str]
    tail: list[str]

    @property
    def tokens(self) -> list[str]:
        return self.prompt + [self.answer] + self.tail


# --------------------------------------------------------------------------- background


class Background:
    """The phrase pool and topic distributions of the background language (fixed by a seed).

    ``shared_head`` > 0 groups the topics into clusters of ``CLUSTER_SIZE`` that share their
    ``shared_head`` most frequent phrases (module docstring).
    """

    def __init__(self, seed: int = LANGUAGE_SEED, shared_head: int = 0):
        check_shared_head(shared_head)
        self.shared_head = shared_head
        rng = np.random.default_rng(seed)
        word_p = _zipf(N_WORDS, 0.7)
        lengths = rng.integers(2, 7, size=N_PHRASES)
        self.phrases = [[f"w{w}" for w in rng.choice(N_WORDS, size=n, p=word_p)] for n in lengths]
        if shared_head == 0:  # the original language: draws unchanged, so old ladders reproduce
            ranks = np.stack([rng.permutation(N_PHRASES) for _ in range(N_TOPICS)])  # (topics, phrases)
        else:
            ranks = np.stack([_cluster_ranks(rng, shared_head) for _ in range(N_TOPICS // CLUSTER_SIZE)])
            ranks = ranks.reshape(N_TOPICS, N_PHRASES)
        self.topic_p = _zipf(N_PHRASES, ZIPF_EXPONENT)[ranks]  # (topics, phrases)
        # rng.choice(N_PHRASES, p=...) recomputes this CDF at every call; searching it directly
        # draws the same phrase from the same uniform (tested), 20x faster.
        self._topic_cdf = np.cumsum(self.topic_p, axis=1)
        self._topic_cdf /= self._topic_cdf[:, -1:]

    def text(self, rng: np.random.Generator, n_tokens: int, topic: int | None = None) -> list[str]:
        """At least ``n_tokens`` words of one topic's phrases (whole phrases)."""
        topic = int(rng.integers(N_TOPICS)) if topic is None else topic
        out: list[str] = []
        while len(out) < n_tokens:
            ids = rng.choice(N_PHRASES, size=16, p=self.topic_p[topic])
            for i in ids:
                out.extend(self.phrases[i])
        return out

    def segment(self, rng: np.random.Generator, topic: int, min_tokens: int) -> list[str]:
        """Whole phrases of ``topic`` until at least ``min_tokens`` words (a topic episode's evidence)."""
        out: list[str] = []
        while len(out) < min_tokens:
            out.extend(self.phrases[int(np.searchsorted(self._topic_cdf[topic], rng.random(), side="right"))])
        return out

    def cluster(self, topic: int) -> list[int]:
        """The topics that share ``topic``'s head (just ``topic`` when there are no clusters)."""
        if self.shared_head == 0:
            return [topic]
        first = topic - topic % CLUSTER_SIZE
        return list(range(first, first + CLUSTER_SIZE))


def check_shared_head(value) -> None:
    """Raise ``ValueError`` unless ``value`` can be a language's ``shared_head``."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < N_PHRASES:
        raise ValueError(f"topic_shared_head must be an integer in [0, {N_PHRASES}), got {value!r}")


def _cluster_ranks(rng: np.random.Generator, shared_head: int) -> np.ndarray:
    """``(CLUSTER_SIZE, N_PHRASES)`` phrase ranks: one head shared by all, tails drawn per topic."""
    base = rng.permutation(N_PHRASES)  # base[j]: rank of phrase j
    tail = np.flatnonzero(base >= shared_head)
    out = np.repeat(base[None], CLUSTER_SIZE, axis=0)
    for row in out:
        row[tail] = shared_head + rng.permutation(len(tail))
    return out


@cache
def background(shared_head: int = 0) -> Background:
    """The language itself (fixed by ``LANGUAGE_SEED`` and ``shared_head``), built once per process."""
    return Background(LANGUAGE_SEED, shared_head)


def default_background() -> Background:
    """The original language (no topic clusters)."""
    return background(0)


def _zipf(n: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** exponent
    return p / p.sum()


# --------------------------------------------------------------------------- episodes


def _words(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct content letters."""
    return [f"a{i}" for i in rng.choice(N_LETTERS, size=n, replace=False)]


def _distractors(rng: np.random.Generator, answer: str, pool: list[str], n_choices: int,
                 fill: list[str] | None = None) -> list[str]:
    """``answer`` plus ``n_choices - 1`` distinct others from ``pool`` (padded with random
    tokens of ``fill``, letters by default), shuffled."""
    fill = fill or [f"a{i}" for i in range(N_LETTERS)]
    others = [t for t in dict.fromkeys(pool) if t != answer]
    rng.shuffle(others)
    while len(others) < n_choices - 1:
        w = fill[rng.integers(len(fill))]
        if w != answer and w not in others:
            others.append(w)
    choices = [answer] + others[: n_choices - 1]
    rng.shuffle(choices)
    return choices


def copy_episode(rng: np.random.Generator, n_choices: int = 4) -> Episode:
    m = int(rng.integers(4, 9))
    seq = _words(rng, m)
    cut = int(rng.integers(1, m))  # answer position inside the copy: never the first word
    prompt = ["#"] + seq + ["#"] + seq[:cut]
    return Episode("copy", prompt, seq[cut], _distractors(rng, seq[cut], seq, n_choices), seq[cut + 1:] + ["#"])


def reverse_episode(rng: np.random.Generator, n_choices: int = 4) -> Episode:
    m = int(rng.integers(3, 7))
    seq = _words(rng, m)
    rev = seq[::-1]
    cut = int(rng.integers(0, m - 1))  # never the last word (it sits right after '<', trivially)
    prompt = ["<"] + seq + [">"] + rev[:cut]
    return Episode("reverse", prompt, rev[cut], _distractors(rng, rev[cut], seq, n_choices), rev[cut + 1:] + [">"])


def recall_episode(rng: np.random.Generator, n_choices: int = 4) -> Episode:
    n = int(rng.integers(3, 6))
    keys = [f"k{i}" for i in rng.choice(N_KEYS, size=n, replace=False)]
    values = _words(rng, n)
    asked = int(rng.integers(n))
    prompt = ["|"] + [t for kv in zip(keys, values) for t in kv] + ["?", keys[asked]]
    return Episode("recall", prompt, values[asked], _distractors(rng, values[asked], values, n_choices), ["|"])


def topic_episode(rng: np.random.Generator, n_choices: int = 4, segment: str = "corpus",
                  shared_head: int = 0) -> Episode:
    """``{ <phrases of topic T> = tT }``: name the topic of a stretch of background text.

    The evidence is the background language itself, so the skill grows with what pretraining
    loss measures (topic-conditional phrase statistics). How often the corpus shows labelled
    episodes decides whether naming is paced by that knowledge or by label exposure
    (:class:`CorpusConfig`). In a clustered language (``shared_head`` > 0) the distractors are
    the answer's cluster-mates, told apart only by their tails.
    """
    lo, hi = TOPIC_SEGMENT[segment]
    bg = background(shared_head)
    topic = int(rng.integers(N_TOPICS))
    seg = bg.segment(rng, topic, int(rng.integers(lo, hi + 1)))
    answer = LABELS[topic]
    pool = [LABELS[t] for t in bg.cluster(topic)]  # the answer alone without clusters: random labels
    return Episode("topic", ["{"] + seg + ["="], answer, _distractors(rng, answer, pool, n_choices, LABELS), ["}"])


def arith_episode(rng: np.random.Generator, n_choices: int = 4) -> Episode:
    a, b = (int(x) for x in rng.integers(N_NUMBERS, size=2))
    answer = f"n{(a + b) % N_NUMBERS}"
    pool = [f"n{i}" for i in rng.permutation(N_NUMBERS)]
    return Episode("arith", [f"n{a}", "+", f"n{b}", "="], answer, _distractors(rng, answer, pool, n_choices), [";"])


EPISODES = {"copy": copy_episode, "recall": recall_episode, "arith": arith_episode, "reverse": reverse_episode,
            "topic": topic_episode}


def episode(task: str, rng: np.random.Generator, n_choices: int = 4, **options) -> Episode:
    return EPISODES[task](rng, n_choices, **options)


# --------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class CorpusConfig:
    """The mixture: how often a document carries a task block, and which task."""

    task_rate: float = 1.0  # fraction of documents with one task block
    # Copy blocks are most documents' block (its circuit needs the practice: a ladder with copy
    # weight 1 beside recall/arith/reverse saw nothing leave chance). Labelled topic episodes are
    # 2 blocks in 5 documents. With rare labels (1 block in 31 documents) learning to *name* topics
    # was paced by how many labelled episodes a model had seen, i.e. by step, and the sizes' few-shot
    # elbows lay 0.9 nats apart (0.5 nats with 1 in 7): loss was not one axis (docs/microladder.md).
    # With labels this frequent, naming is limited by how well a model knows the topics, which is
    # what pretraining loss measures.
    task_weights: tuple[tuple[str, float], ...] = (("copy", 3.0), ("topic", 2.0))
    max_block_episodes: int = 6
    topic_shared_head: int = 0  # > 0: topics in clusters sharing this many top phrases (Background)

    def __post_init__(self) -> None:
        check_shared_head(self.topic_shared_head)

    @cached_property
    def task_names(self) -> list[str]:
        return [t for t, _ in self.task_weights]

    @cached_property
    def task_p(self) -> np.ndarray:
        w = np.array([w for _, w in self.task_weights], dtype=float)
        return w / w.sum()


class Corpus:
    """Documents of the micro-ladder language, as token strings or ids."""

    def __init__(self, config: CorpusConfig = CorpusConfig()):
        self.config = config
        self.background = background(config.topic_shared_head)  # one language, shared with the topic episodes
        self._options = {"topic": {"shared_head": config.topic_shared_head}} if config.topic_shared_head else {}

    def document(self, rng: np.random.Generator, with_tasks: bool = True) -> list[str]:
        """``SEQ_LEN - 1`` tokens (the tokenizer adds ``<s>``)."""
        n = SEQ_LEN - 1
        bg = self.background.text(rng, n)
        if not with_tasks or rng.random() >= self.config.task_rate:
            return bg[:n]
        task = self.config.task_names[rng.choice(len(self.config.task_names), p=self.config.task_p)]
        block: list[str] = []
        for _ in range(int(rng.integers(1, self.config.max_block_episodes + 1))):
            tokens = episode(task, rng, **self._options.get(task, {})).tokens
            if len(block) + len(tokens) > n:  # rare (six long topic episodes): keep whole episodes only
                break
            block += tokens
        at = int(rng.integers(0, n - len(block) + 1))
        return (bg[:at] + block + bg[at:])[:n]

    def batch_ids(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """``(batch_size, SEQ_LEN)`` int64 ids, each row ``<s>`` + a document."""
        rows = [[BOS_ID] + [TOKEN_ID[t] for t in self.document(rng)] for _ in range(batch_size)]
        return np.asarray(rows, dtype=np.int64)

    def heldout_texts(self, n_docs: int, seed: int, with_tasks: bool) -> list[str]:
        """Held-out documents as text lines (space-separated tokens, no ``<s>``)."""
        rng = np.random.default_rng(seed)
        return [" ".join(self.document(rng, with_tasks)) for _ in range(n_docs)]
