"""The abuse detector against the shipped traffic corpus, on a fake clock."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from heliox.cli import main
from heliox.core.abuse_replay import (
    CorpusError,
    Shape,
    ShapeResult,
    load_corpus,
    replay,
    table,
)
from heliox.core.anomaly import AbuseDetector, DetectorConfig, Verdict, decisive, reason

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "bench" / "abuse_corpus" / "corpus.json"
T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def shapes() -> list[Shape]:
    return load_corpus(json.loads(CORPUS.read_text()))


@pytest.fixture(scope="module")
def results(shapes: list[Shape]) -> dict[str, ShapeResult]:
    return {s.name: replay(s, DetectorConfig()) for s in shapes}


def test_the_corpus_has_every_shape_it_promises(shapes: list[Shape]) -> None:
    names = {s.name for s in shapes}
    assert {
        "idle-then-small-burst", "seeded-key-cache-check", "slow-steady-then-nine", "diurnal",
        "steady-jitter", "batch-fixed-hour", "retries-after-errors", "slow-ramp",
        "spike-10x-30s", "credential-stuffing", "flood-100x",
    } <= names  # fmt: skip
    assert all(s.max_delay_seconds for s in shapes if s.kind == "attack")


def test_no_ordinary_shape_is_ever_flagged(results: dict[str, ShapeResult]) -> None:
    ordinary = [r for r in results.values() if r.kind == "ordinary"]
    assert len(ordinary) >= 8
    assert {r.name: r.false_positives for r in ordinary} == {r.name: 0 for r in ordinary}
    assert all(r.admitted > 0 for r in ordinary)


def test_every_attack_is_caught_within_its_stated_delay(results: dict[str, ShapeResult]) -> None:
    attacks = [r for r in results.values() if r.kind == "attack"]
    assert len(attacks) >= 3
    for r in attacks:
        assert r.false_positives == 0, r.name  # nothing before the attack
        assert r.detected_after is not None, r.name
        assert r.max_delay_seconds is not None
        assert r.detected_after <= r.max_delay_seconds, r.name
        assert r.passed


def test_the_documented_results_are_the_evaluators(results: dict[str, ShapeResult]) -> None:
    """docs/abuse-detection.md shows the table `heliox abuse replay` prints at the defaults."""
    doc = (ROOT / "docs" / "abuse-detection.md").read_text(encoding="utf-8")
    assert table(list(results.values())) in doc


def test_the_statistics_alone_do_not_flag_a_quiet_keys_first_burst(shapes: list[Shape]) -> None:
    """Without the share-of-limit floor, the baseline-size rule and the prior still hold."""
    cfg = DetectorConfig(limit_fraction=0.0)
    for name in ("idle-then-small-burst", "seeded-key-cache-check", "slow-steady-then-nine"):
        shape = next(s for s in shapes if s.name == name)
        assert replay(shape, cfg).false_positives == 0, name
    # ... and without the baseline-size rule too: the prior keeps a burst of 9 at z < 3.
    cfg = DetectorConfig(limit_fraction=0.0, min_baseline_requests=0)
    shape = next(s for s in shapes if s.name == "slow-steady-then-nine")
    assert replay(shape, cfg).false_positives == 0


def test_the_old_detector_flagged_the_ordinary_shapes(shapes: list[Shape]) -> None:
    """The evaluator can fail: a detector with none of the evidence rules and a tiny prior
    flags the quiet keys' bursts, as the gateway used to."""
    lax = DetectorConfig(min_baseline_requests=0, min_ratio=1, limit_fraction=0, min_rate=0.2)
    flagged = {s.name for s in shapes if replay(s, lax).false_positives}
    assert {"idle-then-small-burst", "seeded-key-cache-check", "slow-steady-then-nine"} <= flagged


def test_a_key_may_use_what_it_pays_for() -> None:
    """A 10x spike to 5 % of a key's limit is flagged; the same on a 20x larger limit is not."""
    for limit, expected in ((100.0, True), (2000.0, False)):
        det = AbuseDetector(DetectorConfig())
        t = T0
        for _ in range(360):  # an hour at 5 per 10 s window
            for i in range(5):
                assert det.record("k", t + 2 * i, limit_rps=limit) is None
            t += 10
        flagged = any(det.record("k", t + i * 0.1, limit_rps=limit) for i in range(60))
        assert flagged is expected


def test_a_keys_own_threshold_replaces_the_default() -> None:
    def spike(threshold: float | None) -> Verdict | None:
        det = AbuseDetector(DetectorConfig())
        t = T0
        for _ in range(60):
            for i in range(10):
                det.record("k", t + i, threshold=threshold)
            t += 10
        got = None
        for i in range(60):
            got = got or det.record("k", t + i * 0.1, threshold=threshold)
        return got

    default = spike(None)
    assert default is not None and default.threshold == 3.0
    assert spike(50.0) is None


def test_a_reason_never_rounds_the_score_onto_its_bound() -> None:
    assert decisive(3.04, 3.0, 2) == "3.04"
    assert decisive(3.0001, 3.0, 2) == "3.0001"
    assert decisive(3.0, 3.0, 2) == "3.00"
    v = Verdict("k", True, 3.0001, 80, 8, 5, 6, T0, 1.0, "block", 3.0, 40, 1000.0)
    text = reason(v, 4.0, 0.05)
    assert "z = 3.0001 >= 3;" in text
    assert "10.0x the baseline, at least 4x needed" in text
    assert "8.0% of the key's 1000/s limit (at least 5% needed)" in text
    assert "request rate 80/s against a baseline of 8/s" in text
    quiet = dataclasses.replace(v, baseline_mean=0.0, limit_rps=None)
    assert "over a zero baseline" in reason(quiet, 4.0, 0.05)


def test_a_malformed_corpus_is_refused_with_the_shape_named() -> None:
    with pytest.raises(CorpusError, match="shapes"):
        load_corpus({})
    with pytest.raises(CorpusError, match="shape bad: needs limit_rps"):
        load_corpus({"shapes": [{"name": "bad", "segments": []}]})
    with pytest.raises(CorpusError, match="kind"):
        load_corpus({"shapes": [{"name": "x", "kind": "evil", "limit_rps": 1, "segments": [1]}]})


def test_the_table_marks_failures(results: dict[str, ShapeResult]) -> None:
    text = table(list(results.values()))
    assert "| flood-100x | attack |" in text and "FAIL" not in text
    missed = dataclasses.replace(results["flood-100x"], detected_after=None)
    assert "not detected (at most 10 s) **FAIL**" in table([missed])


def test_heliox_abuse_replay_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["abuse", "replay", str(CORPUS), "--shape", "flood-100x"]) == 0
    out = capsys.readouterr().out
    assert "| flood-100x | attack |" in out
    assert main(["abuse", "replay", str(CORPUS), "--shape", "nope"]) == 2
    assert "no shape named nope" in capsys.readouterr().err


def test_heliox_abuse_replay_exits_1_on_a_false_positive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ABUSE_MIN_SPIKE_RATIO", "1")
    monkeypatch.setenv("ABUSE_MIN_LIMIT_FRACTION", "0")
    monkeypatch.setenv("ABUSE_MIN_BASELINE_REQUESTS", "0")
    monkeypatch.setenv("ABUSE_MIN_RATE", "0.2")
    assert main(["abuse", "replay", str(CORPUS), "--shape", "idle-then-small-burst"]) == 1
    assert "**FAIL**" in capsys.readouterr().out
