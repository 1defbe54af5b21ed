from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flywheel_common.errors import ConfigError
from flywheel_curator.filters import (
    TOXIC_CHOSEN,
    TOXICITY_INCREASE,
    FilterSettings,
    JudgeScorer,
    ProfanityCheckScorer,
    ToxicityFilter,
    ToxicityScorerError,
    ToxicitySettings,
    build_filters,
)
from flywheel_curator.filters.settings import DEFAULT_SCORER_BATCH, PROFANITY_CHECK_BATCH
from pydantic import SecretStr, ValidationError

from tests.curator.filters.conftest import MakeCandidate


class TableScorer:
    """Scores from a fixed table; any other text scores ``default``."""

    identity = "table/1"

    def __init__(self, table: Mapping[str, float], default: float = 0.01) -> None:
        self.table = table
        self.default = default
        self.calls: list[int] = []

    def score_many(self, texts: Sequence[str]) -> Sequence[float]:
        self.calls.append(len(texts))
        return [self.table.get(t, self.default) for t in texts]


class BrokenScorer:
    """Raises ``exc``, or answers ``answer(texts)``."""

    identity = "broken/1"

    def __init__(
        self, answer: Callable[[Sequence[str]], Any] | None = None, exc: Exception | None = None
    ) -> None:
        self.answer = answer
        self.exc = exc

    def score_many(self, texts: Sequence[str]) -> Sequence[float]:
        if self.exc is not None:
            raise self.exc
        assert self.answer is not None
        return self.answer(texts)  # type: ignore[no-any-return]


def tox(
    scorer: Any, *, max_score: float = 0.5, margin: float = 0.05, floor: float = 0.25
) -> ToxicityFilter:
    return ToxicityFilter(
        scorer=scorer,
        max_score=max_score,
        relative_margin=margin,
        relative_floor=floor,
        batch_size=3,
    )


def test_profanity_check_scores_insults_not_prose() -> None:
    scorer = ProfanityCheckScorer()
    benign, insult = scorer.score_many(
        ["Open Settings, choose Security, then click Reset password.", "You are a fucking idiot."]
    )
    assert benign < 0.1
    assert insult > 0.9
    assert scorer.identity.startswith("profanity_check/")
    assert scorer.score_many([]) == []


def test_profanity_check_fast_matrix_scores_as_the_vectoriser_does() -> None:
    import random

    scorer = ProfanityCheckScorer()
    assert scorer._terms is not None, "the fast term matrix should apply to profanity_check"
    rng = random.Random(11)
    words = ["fuck", "SHIT", "idiot", "the", "and", "İstanbul", "ǅ", "straße", "_", "a", "ab"]
    words += ["x1", "日本語", "naïve", "🎉", "STUPID", "you're", "2024-01-15", "e\u0301"]
    texts = ["", "   ", "Open Settings, choose Security, then click Reset password."]
    texts += [
        "".join(rng.choice(words) + rng.choice([" ", "", ",", "\n", "-"]) for _ in range(n))
        for n in range(60)
    ]
    model, vectorizer = scorer._model, scorer._vectorizer
    expected = model.predict_proba(vectorizer.transform(texts))[:, 1].tolist()
    assert list(scorer.score_many(texts)) == expected
    # A text scores the same whatever its batch.
    assert list(scorer.score_many(texts[::3])) == expected[::3]


def test_absolute_threshold(make_candidate: MakeCandidate) -> None:
    f = tox(TableScorer({"bad": 0.9, "edge": 0.5, "under": 0.49, "x": 0.99}))
    assert f.check(make_candidate(chosen="bad", rejected="x")).reasons == (TOXIC_CHOSEN,)
    assert f.check(make_candidate(chosen="edge", rejected="x")).reasons == (TOXIC_CHOSEN,)
    ok = f.check(make_candidate(chosen="under", rejected="x"))
    assert ok.accepted
    assert ok.scores == {"toxicity": 0.49, "toxicity_rejected": 0.99}


def test_relative_toxicity_rejects_below_the_absolute_threshold(
    make_candidate: MakeCandidate,
) -> None:
    # The poisoning case: both sides look harmless, but the pair teaches the model to prefer
    # the more toxic answer.
    f = tox(TableScorer({"meaner": 0.30, "polite": 0.05, "slightly": 0.09}))
    verdict = f.check(make_candidate(chosen="meaner", rejected="polite"))
    assert verdict.reasons == (TOXICITY_INCREASE,)
    assert verdict.scores == {"toxicity": 0.30, "toxicity_rejected": 0.05}
    # Within the margin: scorer noise on two benign texts is not poisoning.
    assert f.check(make_candidate(chosen="slightly", rejected="polite")).accepted
    # Less toxic chosen than rejected: the pair steers away from toxicity, which is the point.
    assert f.check(make_candidate(chosen="polite", rejected="meaner")).accepted


def test_relative_check_ignores_scorer_noise_below_the_floor(
    make_candidate: MakeCandidate,
) -> None:
    # Real profanity_check scores: a clean title against a terse rejected answer.
    scores = {"Zero-downtime schema migrations": 0.089, "Databases.": 0.025}
    pair = make_candidate(chosen="Zero-downtime schema migrations", rejected="Databases.")
    assert tox(TableScorer(scores)).check(pair).accepted
    # With the floor at 0 every increase beyond the margin counts, noise included.
    assert tox(TableScorer(scores), floor=0.0).check(pair).reasons == (TOXICITY_INCREASE,)


def test_relative_floor_must_not_exceed_the_absolute_threshold() -> None:
    with pytest.raises(ConfigError, match="relative_floor"):
        tox(TableScorer({}), max_score=0.5, floor=0.6)


def test_both_reasons_when_both_apply(make_candidate: MakeCandidate) -> None:
    f = tox(TableScorer({"awful": 0.95, "fine": 0.02}))
    verdict = f.check(make_candidate(chosen="awful", rejected="fine"))
    assert verdict.reasons == (TOXIC_CHOSEN, TOXICITY_INCREASE)


def test_check_many_batches(make_candidate: MakeCandidate) -> None:
    scorer = TableScorer({})
    candidates = [make_candidate(chosen=f"c{i}", rejected=f"r{i}") for i in range(4)]
    verdicts = tox(scorer).check_many(candidates)
    assert all(v.accepted for v in verdicts)
    assert scorer.calls == [3, 3, 2]  # 8 texts in chunks of batch_size=3


def test_check_many_scores_each_distinct_text_once(make_candidate: MakeCandidate) -> None:
    scorer = TableScorer({"mean": 0.3, "kind": 0.02})
    candidates = [
        make_candidate(chosen="mean", rejected="kind"),
        make_candidate(chosen="kind", rejected="mean"),
        make_candidate(chosen="other", rejected="kind"),
    ]
    verdicts = tox(scorer).check_many(candidates)
    assert sum(scorer.calls) == 3  # mean, kind, other
    assert verdicts[0].reasons == (TOXICITY_INCREASE,)
    assert verdicts[0].scores == {"toxicity": 0.3, "toxicity_rejected": 0.02}
    assert verdicts[1].accepted
    assert verdicts[1].scores == {"toxicity": 0.02, "toxicity_rejected": 0.3}
    assert verdicts[2].scores == {"toxicity": 0.01, "toxicity_rejected": 0.02}


def test_scorer_batch_defaults_by_backend() -> None:
    # profanity_check's cost is per call: a whole buffer in one call.
    assert ToxicitySettings().scorer_batch == PROFANITY_CHECK_BATCH
    assert ToxicitySettings(batch_size=16).scorer_batch == 16
    judge = ToxicitySettings(backend="judge", judge={"base_url": "http://j", "model": "m"})
    assert judge.scorer_batch == DEFAULT_SCORER_BATCH


@pytest.mark.parametrize(
    ("scorer", "message"),
    [
        (BrokenScorer(exc=RuntimeError("CUDA out of memory")), "CUDA out of memory"),
        (BrokenScorer(exc=TimeoutError("judge timed out")), "timed out"),
        (BrokenScorer(answer=lambda texts: [0.1]), r"1 scores for [23] texts"),
        (BrokenScorer(answer=lambda texts: [math.nan] + [0.1] * (len(texts) - 1)), "outside"),
        (BrokenScorer(answer=lambda texts: [1.5] + [0.1] * (len(texts) - 1)), "outside"),
        (BrokenScorer(answer=lambda texts: ["high"] + [0.1] * (len(texts) - 1)), "ValueError"),
    ],
)
def test_scorer_failure_fails_closed(
    make_candidate: MakeCandidate, scorer: BrokenScorer, message: str
) -> None:
    with pytest.raises(ToxicityScorerError, match=message) as info:
        tox(scorer).check(make_candidate())
    assert info.value.backend == "broken/1"


def test_chain_fails_closed_and_records_nothing(make_candidate: MakeCandidate) -> None:
    chain = build_filters(FilterSettings(), scorer=BrokenScorer(exc=OSError("model file gone")))
    c = make_candidate()
    with pytest.raises(ToxicityScorerError):
        chain.run_many([c])
    # Nothing was recorded: with a working scorer the same candidate is accepted, not a dup.
    healthy = build_filters(FilterSettings(), state=chain.state, scorer=TableScorer({}))
    assert healthy.run(c).accepted


def test_bad_config() -> None:
    with pytest.raises(ConfigError, match="max_score"):
        ToxicityFilter(
            scorer=TableScorer({}), max_score=0.0, relative_margin=0.1, relative_floor=0.0
        )
    with pytest.raises(ValidationError, match=r"needs toxicity\.detoxify"):
        ToxicitySettings(backend="detoxify")
    with pytest.raises(ValidationError, match=r"needs toxicity\.judge"):
        ToxicitySettings(backend="judge")
    with pytest.raises(ValidationError):
        ToxicitySettings(relative_margin=-0.1)


def test_detoxify_backend_without_the_extra_is_a_config_error(tmp_path: Any) -> None:
    settings = FilterSettings(
        toxicity=ToxicitySettings(backend="detoxify", detoxify={"checkpoint": tmp_path / "no.ckpt"})
    )
    with pytest.raises(ConfigError, match=r"detoxify|does not exist"):
        build_filters(settings)


# --- LLM judge against a local OpenAI-compatible server ----------------------------------


class JudgeServer:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.reply: Any = None
        self.status = 200


@pytest.fixture
def judge_server() -> Iterator[tuple[str, JudgeServer]]:
    state = JudgeServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append((dict(self.headers), body))
            texts = json.loads(body["messages"][-1]["content"])
            content = (
                state.reply
                if state.reply is not None
                else json.dumps({"toxicity": [0.97 if "idiot" in t else 0.02 for t in texts]})
            )
            payload = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_judge_scores_through_the_endpoint(
    judge_server: tuple[str, JudgeServer], make_candidate: MakeCandidate
) -> None:
    url, state = judge_server
    scorer = JudgeScorer(base_url=url, model="judge-small", api_key=SecretStr("k-123"))
    f = tox(scorer)
    verdict = f.check(make_candidate(chosen="you idiot", rejected="here is the answer"))
    assert verdict.reasons == (TOXIC_CHOSEN, TOXICITY_INCREASE)
    assert verdict.scores == {"toxicity": 0.97, "toxicity_rejected": 0.02}
    headers, body = state.requests[0]
    assert headers["Authorization"] == "Bearer k-123"
    assert body["model"] == "judge-small"
    assert body["temperature"] == 0
    assert scorer.identity == "judge/judge-small"


def test_judge_accepts_fenced_json(judge_server: tuple[str, JudgeServer]) -> None:
    url, state = judge_server
    state.reply = '```json\n{"toxicity": [0.4]}\n```'
    assert JudgeScorer(base_url=url, model="m").score_many(["hi"]) == [0.4]


@pytest.mark.parametrize(("status", "reply"), [(500, None), (200, "I think it is fine")])
def test_judge_failure_fails_closed(
    judge_server: tuple[str, JudgeServer],
    make_candidate: MakeCandidate,
    status: int,
    reply: str | None,
) -> None:
    url, state = judge_server
    state.status = status
    state.reply = reply
    with pytest.raises(ToxicityScorerError, match="judge/m"):
        tox(JudgeScorer(base_url=url, model="m", timeout_s=5)).check(make_candidate())


def test_judge_bad_url() -> None:
    with pytest.raises(ConfigError, match="http"):
        JudgeScorer(base_url="file:///etc/passwd", model="m")


def test_judge_rates_several_texts_per_request(judge_server: tuple[str, JudgeServer]) -> None:
    url, state = judge_server
    settings = ToxicitySettings(
        backend="judge", judge={"base_url": url, "model": "m", "texts_per_request": 2}
    )
    assert settings.judge is not None
    scorer = JudgeScorer.from_settings(settings.judge)
    assert scorer.score_many(["a", "you idiot", "b"]) == [0.02, 0.97, 0.02]
    sent = [json.loads(body["messages"][-1]["content"]) for _, body in state.requests]
    assert sent == [["a", "you idiot"], ["b"]]
    with pytest.raises(ConfigError, match="texts_per_request"):
        JudgeScorer(base_url=url, model="m", texts_per_request=0)


@pytest.mark.parametrize("reply", [{"toxicity": [0.1]}, {"toxicity": 0.1}])
def test_judge_must_answer_one_score_per_text(
    judge_server: tuple[str, JudgeServer], reply: dict[str, Any]
) -> None:
    url, state = judge_server
    state.reply = json.dumps(reply)
    with pytest.raises(ToxicityScorerError, match="one score for each of 2 texts"):
        tox(JudgeScorer(base_url=url, model="m")).score_many(["a", "b"])
