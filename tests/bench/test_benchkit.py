"""The benchmark's pure parts: reading wrk's report, judging targets, summarising py-spy stacks.

The benchmark itself is a script (bench/run.py) and asserts no timing; these tests only check that
its arithmetic and parsing say what the figures say.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from benchkit import nginx, report, stacks, swr, wrk  # noqa: E402

WRK_OUTPUT = """\
Running 3s test @ http://127.0.0.1:29102/g/demo/items
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    19.58ms   10.28ms  74.74ms   72.73%
    Req/Sec     2.61k     0.93k    4.73k    63.33%
  Latency Distribution
     50%  812.00us
     75%   24.12ms
     90%   32.05ms
     99%    1.20s
  7845 requests in 3.01s, 10.98MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 40
Requests/sec:   2602.12
Transfer/sec:      3.64MB
"""


def test_wrk_report_is_read_with_units() -> None:
    r = wrk.parse(WRK_OUTPUT)
    assert r.requests == 7845
    assert r.seconds == pytest.approx(3.01)
    assert r.rps == pytest.approx(2602.12)
    assert r.p50 == pytest.approx(812e-6)
    assert r.p99 == pytest.approx(1.2)
    assert (r.non_2xx, r.socket_errors, r.errors) == (40, 3, 43)
    assert not r.flagged  # 43 of 7848 is 0.55 %


def test_wrk_run_with_mostly_errors_is_flagged() -> None:
    text = WRK_OUTPUT.replace("Non-2xx or 3xx responses: 40", "Non-2xx or 3xx responses: 7000")
    assert wrk.parse(text).flagged


def test_wrk_output_without_latency_distribution_is_refused() -> None:
    text = "\n".join(line for line in WRK_OUTPUT.splitlines() if "%" not in line)
    with pytest.raises(wrk.WrkOutputError):
        wrk.parse(text)


def test_wrk_command_pins_and_sends_the_key() -> None:
    cmd = wrk.command(
        "http://127.0.0.1:1/x", connections=50, duration=3, headers={"X-API-Key": "k"}, cpu=1
    )
    assert cmd[:3] == ["taskset", "-c", "1"]
    assert "-c50" in cmd and "-d3s" in cmd and "--latency" in cmd
    assert cmd[cmd.index("-H") + 1] == "X-API-Key: k"


def _result(rps: float, p99: float, non_2xx: int = 0) -> wrk.WrkResult:
    return wrk.WrkResult(
        requests=10_000, seconds=10, rps=rps, p50=p99 / 2, p99=p99, non_2xx=non_2xx,
        socket_errors=0,
    )  # fmt: skip


def _pair(case: str, mode: str, rps: float, p99: float, c: int = 50) -> report.Row:
    base = report.Row(case, "nginx", c, _result(10_000, 0.010))
    floor = report.Row(case, "floor", c, _result(20_000, 0.005))
    return report.Row(case, "heliox", c, _result(rps, p99), mode=mode, baseline=base, floor=floor)


@pytest.mark.parametrize(
    ("case", "mode", "rps", "label", "verdict"),
    [
        # HIT against the floor (20,000 req/s): 0.5x embedded, 0.4x on Redis.
        (report.HIT, report.EMBEDDED, 10_000, "req/s >= 0.50x floor", "met"),
        (report.HIT, report.EMBEDDED, 9_999, "req/s >= 0.50x floor", "missed"),
        (report.HIT, report.REDIS, 8_000, "req/s >= 0.40x floor", "met"),
        (report.HIT, report.REDIS, 7_900, "req/s >= 0.40x floor", "missed"),
        # MISS against nginx's proxy_pass (10,000 req/s): 0.35x in both modes.
        (report.MISS, report.REDIS, 3_500, "req/s >= 0.35x nginx", "met"),
        (report.MISS, report.EMBEDDED, 3_400, "req/s >= 0.35x nginx", "missed"),
    ],
)
def test_throughput_targets(case: str, mode: str, rps: float, label: str, verdict: str) -> None:
    (target,) = report.targets_of(_pair(case, mode, rps, 0.010))
    assert (target.label, target.verdict) == (label, verdict)


def _latency(mode: str, p50: float, p99: float, answer: str = report.HIT) -> report.Row:
    direct = report.Row(report.LATENCY, "upstream direct", 1, _result(5_000, 0.0004))
    result = _result(3_000, p99)
    result.p50 = p50
    return report.Row(report.LATENCY, "heliox", 1, result, mode=mode, direct=direct, answer=answer)


@pytest.mark.parametrize(
    ("mode", "p50", "p99", "verdicts"),
    [
        # The upstream's own p50 is 200 µs: embedded may add 50 µs, Redis 150 µs.
        (report.EMBEDDED, 250e-6, 750e-6, ("met", "met")),
        (report.EMBEDDED, 251e-6, 760e-6, ("missed", "missed")),
        (report.REDIS, 350e-6, 1.2e-3, ("met", "missed")),
        (report.REDIS, 351e-6, 1.0e-3, ("missed", "met")),
    ],
)
def test_latency_targets_at_concurrency_one(
    mode: str, p50: float, p99: float, verdicts: tuple[str, str]
) -> None:
    added, spread = report.targets_of(_latency(mode, p50, p99))
    assert (added.label, spread.label) == (
        f"added p50 <= {report.ADDED_P50_TARGETS[mode] * 1e6:.0f} µs",
        "p99 <= 3x p50",
    )
    assert (added.verdict, spread.verdict) == verdicts
    assert report.targets_of(_latency(mode, p50, p99, answer=report.MISS)) == []


def test_errors_make_a_comparison_invalid_not_fast() -> None:
    row = _pair(report.HIT, report.EMBEDDED, 50_000, 0.001)
    row.result = _result(50_000, 0.001, non_2xx=9_000)
    assert {t.verdict for t in report.targets_of(row)} == {"invalid (errors)"}
    assert "FLAGGED" in report.fmt_errors(row.result)
    clean = _pair(report.HIT, report.EMBEDDED, 50_000, 0.001)
    assert clean.floor is not None
    clean.floor.result = _result(20_000, 0.005, non_2xx=9_000)  # a yardstick in error
    assert {t.verdict for t in report.targets_of(clean)} == {"invalid (errors)"}


def test_tables_carry_ratios_and_added_latency() -> None:
    direct = report.Row(report.LATENCY, "upstream direct", 1, _result(5_000, 0.0004))
    gw = report.Row(report.LATENCY, "heliox HIT", 1, _result(3_000, 0.0010), direct=direct)
    rep = report.Report(machine={}, settings={}, rows=[direct, gw])
    head, body = report.latency_table(rep.latency_rows)
    assert body[1][head.index("added p50")] == "300 µs"  # p50 0.5 ms minus 0.2 ms
    assert body[1][head.index("p99/p50")] == "2.00x"
    pair = _pair(report.HIT, report.EMBEDDED, 2_500, 0.020)
    assert pair.baseline is not None and pair.floor is not None
    head, body = report.throughput_table([pair.baseline, pair.floor, pair])
    assert body[2][head.index("req/s vs floor")] == "0.12"
    assert body[2][head.index("req/s vs nginx")] == "0.25"
    assert body[2][head.index("p99 vs nginx")] == "2.00x"
    assert body[2][head.index("targets")] == "req/s >= 0.50x floor: missed"


def test_nginx_config_renders_every_placeholder(tmp_path: Path) -> None:
    text = nginx.render(tmp_path, upstream_port=1001, cache_port=1002, pass_port=1003)
    assert "$prefix" not in text and "$upstream_port" not in text
    assert "listen 127.0.0.1:1002;" in text and "listen 127.0.0.1:1003;" in text
    assert "server 127.0.0.1:1001;" in text
    assert "$upstream_cache_status" in text  # nginx's own variable survives rendering
    assert "daemon off;" in text and "worker_processes 1;" in text


RAW = """\
thread (10): MainThread;run_forever (asyncio/base_events.py:600);Handle._run (asyncio/events.py:80);Gateway._handle (heliox/gateway/app.py:96);ResponseSink.body (heliox/gateway/exchange.py:79) 6
thread (10): MainThread;run_forever (asyncio/base_events.py:600);Handle._run (asyncio/events.py:80);Gateway._handle (heliox/gateway/app.py:96);hash_key (heliox/snapshot.py:10);openssl_sha256 (hashlib.py:1) 3
thread (10): MainThread;main (heliox/cli.py:1);BaseEventLoop.run_forever (asyncio/base_events.py:600);EpollSelector.select (selectors.py:468) 1
thread (11) 5
thread (12): Thread-6 (_connection_worker_thread);_connection_worker_thread (aiosqlite/core.py:59) 2
"""  # noqa: E501


def test_stacks_charge_library_time_to_the_heliox_caller() -> None:
    s = stacks.summarise(stacks.parse(RAW.splitlines()))
    assert (s.total, s.selected) == (17, 10)
    assert s.threads["MainThread"] == 10
    assert s.threads["_connection_worker_thread"] == 2
    assert s.heliox_owner["hash_key (heliox/snapshot.py)"] == 3
    assert s.heliox_owner["ResponseSink.body (heliox/gateway/exchange.py)"] == 6
    # The CLI frame under the event loop is not a request's owner.
    assert s.heliox_owner["(outside Heliox: server, event loop)"] == 1
    # Inclusive counts the running callback only, not the start-up frames under it.
    assert s.inclusive["Gateway._handle (heliox/gateway/app.py)"] == 9
    assert "main (heliox/cli.py)" not in s.inclusive
    assert s.components["heliox gateway (pipeline)"] == 6


def test_repeated_runs_report_medians_and_summed_counts() -> None:
    runs = [_result(1_000, 0.010), _result(3_000, 0.030, non_2xx=5), _result(2_000, 0.020)]
    r = wrk.combine(runs)
    assert (r.rps, r.p99, r.requests, r.non_2xx) == (2_000, 0.020, 30_000, 5)


def test_repeats_that_scatter_are_flagged() -> None:
    assert report.scatter_note("HIT floor c=50", [32_568, 36_487, 19_233]) == (
        "HIT floor c=50: its runs scattered from 19,233 to 36,487 req/s (1.9x): the machine's "
        "speed changed during the run, and the median and the ratios taken from it are not a "
        "measurement of the servers"
    )
    assert report.scatter_note("HIT floor c=50", [32_568, 34_000, 36_000]) is None  # 1.11x
    assert report.scatter_note("one run", [10_000]) is None
    assert report.scatter_note("no answers", [0, 5_000]) is None  # flagged as errors instead


def test_cpu_ratios_are_the_references_cpu_over_heliox_cpu() -> None:
    row = _pair(report.HIT, report.EMBEDDED, 4_000, 0.010)
    assert row.cpu_ratio is None and row.floor_cpu_ratio is None  # not measured
    assert row.baseline is not None and row.floor is not None
    row.baseline.cpu_per_request = 20e-6
    row.floor.cpu_per_request = 25e-6
    row.cpu_per_request = 200e-6
    assert row.cpu_ratio == pytest.approx(0.1)
    assert row.floor_cpu_ratio == pytest.approx(0.125)
    # The floor target is judged by the floor's CPU ratio, not nginx's.
    assert "by CPU/req: 0.12" in report.summary_lines(report.Report({}, {}, [row]))[0]


def test_install_hint_names_the_missing_packages() -> None:
    from benchkit import machine

    assert "apt-get install -y wrk util-linux" in machine.install_hint(["wrk", "taskset"])


# --- bench/stampede.py's SWR analysis ------------------------------------------------------------
class _Rec:
    def __init__(self, sent: float, latency: float, x_cache: str = "HIT", ok: bool = True):
        self.sent, self.done, self.x_cache, self.ok = sent, sent + latency, x_cache, ok


def _steady(duration: int, per_second: int = 100, latency: float = 0.001) -> list[_Rec]:
    return [_Rec(s + i / per_second, latency) for s in range(duration) for i in range(per_second)]


def test_swr_analysis_finds_each_expiry_and_judges_its_seconds() -> None:
    records = _steady(10)
    # An expiry at 4.5 s: the answers served stale meanwhile are slow (a refresh that hurts).
    records += [_Rec(4.5 + i / 100, 0.02, "STALE") for i in range(10)]
    result = swr.analyse(records, 10, gap=0.5)
    assert len(result.episodes) == 1
    assert result.episodes[0].answers == {"STALE": 10}
    assert result.episodes[0].seconds == [4]
    assert 4 in [s.index for s in result.seconds if s.expiry]
    assert result.steady_p99 == pytest.approx(0.001)
    assert result.worst_ratio is not None and result.worst_ratio > result.limit  # a spike: missed
    assert result.quiet_over_limit == 0


def test_swr_analysis_without_a_spike_meets_the_limit() -> None:
    records = [*_steady(10), _Rec(6.2, 0.001, "UPDATING"), _Rec(8.9, 0.001, "STALE")]
    result = swr.analyse(records, 10, gap=0.5)
    assert len(result.episodes) == 2  # far apart: two expiries
    assert result.worst_ratio is not None and result.worst_ratio <= result.limit
    assert result.errors == 0 and result.requests == 1002
