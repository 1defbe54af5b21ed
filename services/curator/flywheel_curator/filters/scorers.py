"""Toxicity scorers: the ``ToxicityScorer`` protocol and the offline default.

``score_many(texts) -> probabilities``, one per text, in order. Backends:

- ``ProfanityCheckScorer`` (here; the default): offline, ships its model in the
  alt-profanity-check wheel, about 35k texts/s. A bag-of-words model trained on offensive
  tweets: it catches explicit slurs, insults and profanity, and misses polite-sounding,
  implicit hate (recall 0.23 at FPR 0.05 on an implicit-hate set; docs/findings.md). It also
  scores some ordinary technical words high ("kill" 0.95, "kill the process" 0.37). Treat it
  as a floor.
- ``DetoxifyScorer`` (``detoxify_scorer.py``): a Detoxify checkpoint from local disk.
- ``JudgeScorer`` (``judge_scorer.py``): an LLM judge behind an OpenAI-compatible endpoint.

The toxicity filter hands every backend the same pieces (``spans.py``) in batches of
``toxicity.batch_size``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from itertools import chain, repeat
from typing import Any, Protocol

import numpy as np

__all__ = ["ProfanityCheckScorer", "ToxicityScorer"]


class ToxicityScorer(Protocol):
    """Scores texts with a toxicity probability in [0, 1].

    ``identity`` names the backend and its model (``profanity_check/1.9.1``) and enters the
    filter-config hash, so rows scored by different models are told apart. ``score_many`` must
    return one score per text, in order, or raise: the filter turns any exception into
    ``ToxicityScorerError``.
    """

    @property
    def identity(self) -> str: ...

    def score_many(self, texts: Sequence[str]) -> Sequence[float]: ...


def _package_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


# The TfidfVectorizer settings ``_TermMatrix`` reproduces (profanity_check's, and sklearn's
# defaults besides stop_words and min_df).
_TERM_MATRIX_PARAMS: dict[str, object] = {
    "analyzer": "word",
    "binary": False,
    "input": "content",
    "lowercase": True,
    "ngram_range": (1, 1),
    "norm": "l2",
    "preprocessor": None,
    "strip_accents": None,
    "sublinear_tf": False,
    "token_pattern": r"(?u)\b\w\w+\b",
    "tokenizer": None,
    "use_idf": True,
}
# The token pattern's matches: maximal runs of two or more word characters. The same tokens
# without the word-boundary tests, which cost a quarter of the scan.
_TOKEN = re.compile(r"\w\w+")
# Texts on which the fast matrix must equal the vectoriser's before it is used.
_TERM_MATRIX_PROBE = (
    "",
    "Open Settings, then click Reset password.",
    "You are a STUPID idiot, the worst of the worst!!",
    "İstanbul ŞEHİR straße naïve ﬁle_name x y 2024-01-15 a1b2",
    "the and of it is",
)


class _TermMatrix:
    """``vectorizer.transform(texts)`` of a fitted TfidfVectorizer with
    ``_TERM_MATRIX_PARAMS``, built in a few C-level passes over all texts at once: sklearn's
    transform counts tokens in a Python loop per document, two thirds of the scorer's time."""

    def __init__(self, vectorizer: Any) -> None:
        from sklearn.preprocessing import normalize

        stop_words = vectorizer.get_stop_words() or frozenset()
        # Stop words are dropped before the vocabulary lookup; here they miss it.
        self._ids = {w: i for w, i in vectorizer.vocabulary_.items() if w not in stop_words}
        self._width = len(vectorizer.vocabulary_)
        self._idf = vectorizer.idf_
        self._normalize = normalize
        self._sparse = type(vectorizer.transform([""]))

    @classmethod
    def matching(cls, vectorizer: Any) -> _TermMatrix | None:
        """The fast matrix where it is provably the vectoriser's: same settings, and the same
        matrix on the probe texts (a changed sklearn would fail here, not in production)."""
        params = vectorizer.get_params()
        if any(params.get(name) != value for name, value in _TERM_MATRIX_PARAMS.items()):
            return None
        fast = cls(vectorizer)
        got, expected = fast(_TERM_MATRIX_PROBE), vectorizer.transform(list(_TERM_MATRIX_PROBE))
        same = all(
            np.array_equal(getattr(got, part), getattr(expected, part))
            for part in ("indptr", "indices", "data")
        )
        return fast if same else None

    def __call__(self, texts: Sequence[str]) -> Any:
        tokens = [_TOKEN.findall(text.lower()) for text in texts]
        flat = list(chain.from_iterable(tokens))
        ids = np.fromiter(map(self._ids.get, flat, repeat(-1)), dtype=np.int64, count=len(flat))
        docs = np.repeat(np.arange(len(texts), dtype=np.int64), [len(t) for t in tokens])
        known = ids >= 0
        # One key per (document, term): sorted, they are the CSR layout, counts included.
        keys, counts = np.unique(docs[known] * self._width + ids[known], return_counts=True)
        columns = keys % self._width
        indptr = np.searchsorted(keys // self._width, np.arange(len(texts) + 1))
        matrix = self._sparse(
            (counts * self._idf[columns], columns, indptr), shape=(len(texts), self._width)
        )
        return self._normalize(matrix, norm="l2", copy=False)


class ProfanityCheckScorer:
    """The offline default: alt-profanity-check's linear SVM over a tf-idf vectoriser.

    Catches explicit profanity, slurs and insults; misses implicit, polite-sounding hate. Use
    ``DetoxifyScorer`` or ``JudgeScorer`` where that matters.
    """

    def __init__(self) -> None:
        # Imported here: the package unpickles its model at import time (about 0.3 s), which
        # only a curator that scores toxicity should pay.
        from profanity_check import profanity_check

        self._vectorizer = profanity_check.vectorizer
        self._model = profanity_check.model
        self._terms = _TermMatrix.matching(self._vectorizer)
        self._identity = f"profanity_check/{_package_version('alt-profanity-check')}"

    @property
    def identity(self) -> str:
        return self._identity

    def score_many(self, texts: Sequence[str]) -> Sequence[float]:
        if not texts:
            return []
        if self._terms is not None:
            matrix = self._terms(texts)
        else:
            matrix = self._vectorizer.transform(list(texts))
        # predict_prob() wraps this in numpy.apply_along_axis, a Python loop per row; slicing
        # the probability column directly is the same numbers, several times faster.
        probs: list[float] = self._model.predict_proba(matrix)[:, 1].tolist()
        return probs
