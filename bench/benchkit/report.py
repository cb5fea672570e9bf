"""The benchmark's table: figures, ratios to the bare server and to nginx, and the performance
targets, met or missed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchkit.wrk import WrkResult

HIT, MISS, LATENCY = "HIT", "MISS", "latency"
EMBEDDED, REDIS = "embedded", "redis"

# The performance targets (bench/README.md). A HIT is judged against the floor: granian answering
# a HIT-shaped constant through the interface the data plane uses, measured by turns with Heliox
# (the ratio to nginx moves with the CPU, the ratio to the bare server does not). A MISS is judged
# against nginx's proxy_pass. Both at every concurrency.
FLOOR_TARGETS = {(HIT, EMBEDDED): 0.5, (HIT, REDIS): 0.4}
NGINX_TARGETS = {(MISS, EMBEDDED): 0.35, (MISS, REDIS): 0.35}
# Concurrency 1, cache HIT: what Heliox adds to the upstream's own p50, and its p99 over its p50.
ADDED_P50_TARGETS = {EMBEDDED: 50e-6, REDIS: 150e-6}
P99_OVER_P50 = 3.0
# Repeats of one configuration further apart than this (fastest over slowest) mean the machine's
# speed changed during the run: a virtual machine's CPU was seen to give the bare server 10,404
# and 49,479 req/s minutes apart, with no other process on it.
SCATTER_LIMIT = 1.25


def scatter_note(label: str, rps: Sequence[float]) -> str | None:
    """A warning for the report when the repeats of `label` scattered past SCATTER_LIMIT."""
    if len(rps) < 2 or min(rps) <= 0:
        return None
    spread = max(rps) / min(rps)
    if spread <= SCATTER_LIMIT:
        return None
    return (
        f"{label}: its runs scattered from {min(rps):,.0f} to {max(rps):,.0f} req/s "
        f"({spread:.1f}x): the machine's speed changed during the run, and the median and the "
        "ratios taken from it are not a measurement of the servers"
    )


@dataclass
class Row:
    case: str  # HIT | MISS | latency
    server: str  # as printed
    connections: int
    result: WrkResult
    mode: str | None = None  # embedded | redis for Heliox rows
    baseline: Row | None = None  # the nginx row this one is compared with
    floor: Row | None = None  # the bare granian row this one is compared with (HIT)
    direct: Row | None = None  # latency rows: the upstream called directly
    answer: str | None = None  # latency rows of Heliox: HIT | MISS
    foreign: float | None = None  # share of the server CPU used by other processes meanwhile
    cpu_per_request: float | None = None  # CPU seconds the serving processes spent per request
    upstream_calls: int | None = None

    @property
    def rps_ratio(self) -> float | None:
        if self.baseline is None or not self.baseline.result.rps:
            return None
        return self.result.rps / self.baseline.result.rps

    @property
    def floor_ratio(self) -> float | None:
        if self.floor is None or not self.floor.result.rps:
            return None
        return self.result.rps / self.floor.result.rps

    @property
    def floor_cpu_ratio(self) -> float | None:
        """Requests per CPU-second relative to the bare server."""
        base = self.floor.cpu_per_request if self.floor else None
        if not base or not self.cpu_per_request:
            return None
        return base / self.cpu_per_request

    @property
    def p99_over_p50(self) -> float | None:
        return self.result.p99 / self.result.p50 if self.result.p50 else None

    @property
    def p99_ratio(self) -> float | None:
        if self.baseline is None or not self.baseline.result.p99:
            return None
        return self.result.p99 / self.baseline.result.p99

    @property
    def cpu_ratio(self) -> float | None:
        """Requests per CPU-second relative to nginx: the req/s ratio of an otherwise idle CPU."""
        base = self.baseline.cpu_per_request if self.baseline else None
        if not base or not self.cpu_per_request:
            return None
        return base / self.cpu_per_request

    @property
    def added_p50(self) -> float | None:
        return None if self.direct is None else self.result.p50 - self.direct.result.p50

    @property
    def added_p99(self) -> float | None:
        return None if self.direct is None else self.result.p99 - self.direct.result.p99

    @property
    def invalid(self) -> bool:
        """Errors in this run or in its yardsticks make the comparison meaningless."""
        return any(r is not None and r.result.flagged for r in (self, self.baseline, self.floor))


@dataclass
class Target:
    row: Row
    label: str  # e.g. "req/s >= 0.40x nginx"
    value: float | None
    threshold: float
    higher_is_better: bool

    @property
    def verdict(self) -> str:
        if self.row.invalid or self.value is None:
            return "invalid (errors)"
        ok = self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold
        return "met" if ok else "missed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "case": self.row.case,
            "server": self.row.server,
            "connections": self.row.connections,
            "target": self.label,
            "value": None if self.value is None else round(self.value, 4),
            "threshold": self.threshold,
            "verdict": self.verdict,
        }


def targets_of(row: Row) -> list[Target]:
    if row.mode is None:
        return []
    found: list[Target] = []
    if row.case == LATENCY:
        added = ADDED_P50_TARGETS.get(row.mode)
        if row.answer == HIT and added is not None:
            label = f"added p50 <= {added * 1e6:.0f} µs"
            found.append(Target(row, label, row.added_p50, added, False))
            label = f"p99 <= {P99_OVER_P50:g}x p50"
            found.append(Target(row, label, row.p99_over_p50, P99_OVER_P50, False))
        return found
    floor = FLOOR_TARGETS.get((row.case, row.mode))
    if floor is not None and row.floor is not None:
        found.append(Target(row, f"req/s >= {floor:.2f}x floor", row.floor_ratio, floor, True))
    rps = NGINX_TARGETS.get((row.case, row.mode))
    if rps is not None and row.baseline is not None:
        found.append(Target(row, f"req/s >= {rps:.2f}x nginx", row.rps_ratio, rps, True))
    return found


@dataclass
class Report:
    machine: dict[str, object]
    settings: dict[str, object]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def throughput_rows(self) -> list[Row]:
        return [r for r in self.rows if r.case in (HIT, MISS)]

    @property
    def latency_rows(self) -> list[Row]:
        return [r for r in self.rows if r.case == LATENCY]

    @property
    def targets(self) -> list[Target]:
        return [t for r in self.rows for t in targets_of(r)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "notes": self.notes,
            "rows": [
                {
                    "case": r.case,
                    "server": r.server,
                    "mode": r.mode,
                    "connections": r.connections,
                    **r.result.as_dict(),
                    "rps_ratio": _round(r.rps_ratio),
                    "floor_rps_ratio": _round(r.floor_ratio),
                    "floor_requests_per_cpu_second_ratio": _round(r.floor_cpu_ratio),
                    "p99_over_p50": _round(r.p99_over_p50),
                    "p99_ratio": _round(r.p99_ratio),
                    "added_p50": _round(r.added_p50, 7),
                    "added_p99": _round(r.added_p99, 7),
                    "compared_with": r.baseline.server if r.baseline else None,
                    "server_cpu_used_by_others": _round(r.foreign),
                    "cpu_seconds_per_request": _round(r.cpu_per_request, 9),
                    "requests_per_cpu_second_ratio": _round(r.cpu_ratio),
                    "upstream_calls": r.upstream_calls,
                }
                for r in self.rows
            ],
            "targets": [t.as_dict() for t in self.targets],
        }


def _round(v: float | None, digits: int = 4) -> float | None:
    return None if v is None else round(v, digits)


# --- formatting ---------------------------------------------------------------------------------


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return ""
    us = seconds * 1e6
    if abs(us) < 1000:
        return f"{us:.0f} µs"
    if abs(us) < 1_000_000:
        return f"{us / 1000:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(v: float | None, suffix: str = "") -> str:
    return "" if v is None else f"{v:.2f}{suffix}"


def fmt_errors(r: WrkResult) -> str:
    if not r.errors:
        return "0"
    text = f"{r.errors} ({r.error_share:.1%})"
    return text + " FLAGGED" if r.flagged else text


def _verdicts(row: Row) -> str:
    return "; ".join(f"{t.label}: {t.verdict}" for t in targets_of(row))


NUMERIC = frozenset(
    {"c", "req/s", "p50", "p99", "added p50", "added p99", "req/s vs nginx", "p99 vs nginx",
     "others on CPU", "CPU/req", "req/CPU-s vs nginx", "req/s vs floor", "req/CPU-s vs floor",
     "p99/p50"}
)  # fmt: skip


def fmt_share(v: float | None) -> str:
    return "" if v is None else f"{v:.0%}"


def throughput_table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    head = ["case", "server", "c", "req/s", "p50", "p99", "errors", "others on CPU", "CPU/req",
            "req/s vs floor", "req/CPU-s vs floor", "req/s vs nginx", "req/CPU-s vs nginx",
            "p99 vs nginx", "targets"]  # fmt: skip
    body = [
        [
            r.case,
            r.server,
            str(r.connections),
            f"{r.result.rps:,.0f}",
            fmt_time(r.result.p50),
            fmt_time(r.result.p99),
            fmt_errors(r.result),
            fmt_share(r.foreign),
            fmt_time(r.cpu_per_request),
            fmt_ratio(r.floor_ratio),
            fmt_ratio(r.floor_cpu_ratio),
            fmt_ratio(r.rps_ratio),
            fmt_ratio(r.cpu_ratio),
            fmt_ratio(r.p99_ratio, "x"),
            _verdicts(r),
        ]
        for r in rows
    ]
    return head, body


def latency_table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    head = ["server (c=1)", "req/s", "p50", "p99", "added p50", "added p99", "p99/p50", "errors",
            "others on CPU", "CPU/req", "targets"]  # fmt: skip
    body = [
        [
            r.server,
            f"{r.result.rps:,.0f}",
            fmt_time(r.result.p50),
            fmt_time(r.result.p99),
            fmt_time(r.added_p50),
            fmt_time(r.added_p99),
            fmt_ratio(r.p99_over_p50, "x"),
            fmt_errors(r.result),
            fmt_share(r.foreign),
            fmt_time(r.cpu_per_request),
            _verdicts(r),
        ]
        for r in rows
    ]
    return head, body


def text_table(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if h in NUMERIC else c.ljust(w)
            for c, w, h in zip(cells, widths, head, strict=True)
        ).rstrip()

    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, body)])


def markdown_table(head: list[str], body: list[list[str]]) -> str:
    sep = ["---:" if h in NUMERIC else "---" for h in head]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, sep, *body])


def summary_lines(report: Report) -> list[str]:
    lines = []
    for t in report.targets:
        if t.value is None:
            value = "n/a"
        elif "µs" in t.label:
            value = fmt_time(t.value)
        else:
            value = f"{t.value:.2f}"
        by_cpu = t.row.floor_cpu_ratio if "floor" in t.label else t.row.cpu_ratio
        if t.label.startswith("req/s") and by_cpu is not None:
            value += f" (by CPU/req: {by_cpu:.2f})"
        lines.append(
            f"{t.row.case} {t.row.server} c={t.row.connections}: {t.label} -> {value}: {t.verdict}"
        )
    return lines


def machine_line(machine: dict[str, object]) -> str:
    return (
        f"{machine['nproc']} CPUs ({machine['cpu_model']}), {machine['memory_gib']} GiB, "
        f"Heliox {machine.get('revision', '?')}, "
        f"Linux {machine['kernel']}; Python {machine['python']}, granian {machine['granian']}, "
        f"{machine['nginx']}, {machine['wrk']}"
    )


LEGEND = (
    '"others on CPU": share of the server CPU used by processes other than the measured ones '
    "during the run (other users' jobs; in Redis mode also Redis and PostgreSQL when the kernel "
    "runs them there); high values mean contention depressed the figures. "
    '"CPU/req": CPU time the serving processes (the server, and the upstream behind it) spent '
    'per request, which contention does not change; "req/CPU-s vs nginx" is nginx\'s CPU/req '
    'over Heliox\'s, the req/s ratio to expect on an otherwise idle CPU. "floor": granian '
    "alone, through the interface the data plane uses, answering a HIT-shaped constant (size and "
    "header count of a real HIT): the most any Python pipeline on that server can reach."
)


def as_text(report: Report) -> str:
    parts = ["Machine: " + machine_line(report.machine)]
    parts.append("Settings: " + ", ".join(f"{k}={v}" for k, v in report.settings.items()))
    if report.throughput_rows:
        parts += ["", "Throughput (each Heliox row against the floor and nginx rows above it)"]
        parts.append(text_table(*throughput_table(report.throughput_rows)))
    if report.latency_rows:
        parts += ["", "Added latency at concurrency 1 (vs the upstream called directly)"]
        parts.append(text_table(*latency_table(report.latency_rows)))
    parts += ["", LEGEND]
    if report.targets:
        parts += ["", "Targets:"] + ["  " + s for s in summary_lines(report)]
    if report.notes:
        parts += ["", "Notes:"] + ["  " + n for n in report.notes]
    return "\n".join(parts)


def as_markdown(report: Report) -> str:
    parts = ["# Heliox vs the bare server and nginx", ""]
    parts += ["Machine: " + machine_line(report.machine), ""]
    parts.append("Settings: " + ", ".join(f"`{k}={v}`" for k, v in report.settings.items()))
    if report.throughput_rows:
        parts += [
            "",
            "## Throughput",
            "",
            "Each Heliox row is compared with the floor (bare granian) and nginx rows measured "
            "by turns with it.",
            "",
        ]
        parts.append(markdown_table(*throughput_table(report.throughput_rows)))
    if report.latency_rows:
        parts += [
            "",
            "## Added latency at concurrency 1",
            "",
            '"added" is the figure minus the same percentile of the upstream called directly.',
            "",
        ]
        parts.append(markdown_table(*latency_table(report.latency_rows)))
    parts += ["", LEGEND]
    if report.targets:
        parts += ["", "## Targets", ""] + ["- " + s for s in summary_lines(report)]
    if report.notes:
        parts += ["", "## Notes", ""] + ["- " + n for n in report.notes]
    return "\n".join(parts) + "\n"
