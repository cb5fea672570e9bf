"""The admission contract's own checks: limit specs and requests."""

from __future__ import annotations

import pytest

from heliox.state.admission import SLIDING_WINDOW, TOKEN_BUCKET, AdmissionRequest, LimitSpec


def test_limit_reports_burst_or_requests_per_window() -> None:
    assert LimitSpec(TOKEN_BUCKET, 100, 200).limit == 200
    assert LimitSpec(SLIDING_WINDOW, 100 / 60, 1, 60).limit == 100  # 100 a minute
    assert LimitSpec(SLIDING_WINDOW, 0.001, 1, 1).limit == 1


@pytest.mark.parametrize(
    "args",
    [
        ("leaky_bucket", 1.0, 1, 1),
        (TOKEN_BUCKET, 0.0, 1, 1),
        (TOKEN_BUCKET, 1.0, 0, 1),
        (SLIDING_WINDOW, 1.0, 1, 0),
        (TOKEN_BUCKET, float("nan"), 1, 1),
        (TOKEN_BUCKET, float("inf"), 1, 1),
    ],
)
def test_bad_limit_specs_are_refused(args: tuple[str, float, int, int]) -> None:
    with pytest.raises(ValueError):
        LimitSpec(*args)


def test_principal_and_cost() -> None:
    assert AdmissionRequest("k:1:r:7", quota_subject="k:1").principal == "k:1"
    assert AdmissionRequest("ip:1.2.3.4").principal == "ip:1.2.3.4"
    with pytest.raises(ValueError):
        AdmissionRequest("k:1", cost=-1)
