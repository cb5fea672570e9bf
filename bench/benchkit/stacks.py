"""Summarise py-spy's collapsed stacks (`py-spy record -f raw --threads`): where the time goes.

Each line is `thread (tid): name;outer frame;...;inner frame COUNT`, a frame `function (file:line)`.
Three views: by thread, by function (self and inclusive), and by the innermost Heliox function on
the stack, which charges library time (asyncio, redis, prometheus, ...) to the code that asked
for it. Percentages are of the samples in the thread(s) summarised.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::\d+)?\)$")
_THREAD = re.compile(r"^thread \((?P<tid>\d+)\)(?::\s*(?P<name>.*))?$")

# Leaf files grouped into the parts of the process a reader recognises.
COMPONENTS: list[tuple[str, str]] = [
    ("heliox/gateway/", "heliox gateway (pipeline)"),
    ("heliox/state/", "heliox state backends"),
    ("heliox/core/", "heliox core (pure logic)"),
    ("heliox/db/", "heliox db (log writer, snapshot)"),
    ("heliox/", "heliox other"),
    ("granian/", "granian (Python side)"),
    ("asyncio/", "asyncio event loop"),
    ("redis/", "redis-py"),
    ("hiredis", "redis-py"),
    ("aiohttp/", "aiohttp"),
    ("yarl/", "aiohttp"),
    ("multidict/", "aiohttp"),
    ("prometheus_client/", "prometheus_client"),
    ("sqlalchemy/", "SQLAlchemy / drivers"),
    ("asyncpg/", "SQLAlchemy / drivers"),
    ("aiosqlite/", "SQLAlchemy / drivers"),
    ("logging/", "logging"),
]


@dataclass
class Frame:
    func: str
    file: str

    @property
    def name(self) -> str:
        return f"{self.func} ({self.file})"


def parse_frame(text: str) -> Frame:
    m = _FRAME.match(text.strip())
    if m is None:
        return Frame(text.strip(), "?")
    return Frame(m.group("func"), _short(m.group("file")))


def _short(path: str) -> str:
    # Site-packages and the editable source tree print differently; keep from the package down.
    for marker in ("site-packages/", "/src/", "python3.11/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return path


def component(file: str) -> str:
    for prefix, name in COMPONENTS:
        if prefix in file:
            return name
    return "other (stdlib, ...)"


@dataclass
class Stack:
    thread: str
    frames: list[Frame]
    count: int


def parse(lines: Iterable[str]) -> list[Stack]:
    stacks: list[Stack] = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        body, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        parts = body.split(";")
        thread = "?"
        m = _THREAD.match(parts[0])
        if m is not None:
            parts = parts[1:]
            thread = m.group("name") or "unnamed (native thread: granian's runtime)"
        stacks.append(Stack(_thread_kind(thread), [parse_frame(p) for p in parts], int(count)))
    return stacks


def _thread_kind(name: str) -> str:
    # "Thread-6 (_connection_worker_thread)" -> "_connection_worker_thread": one row per kind.
    m = re.match(r"Thread-\d+ \((.*)\)$", name)
    return m.group(1) if m else name


@dataclass
class Summary:
    total: int
    threads: Counter[str] = field(default_factory=Counter)
    self_time: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    components: Counter[str] = field(default_factory=Counter)
    heliox_owner: Counter[str] = field(default_factory=Counter)
    selected: int = 0


def summarise(stacks: list[Stack], thread: str | None = "MainThread") -> Summary:
    """Figures for `thread` (all threads when None); `threads` always covers every thread."""
    s = Summary(total=sum(st.count for st in stacks))
    for st in stacks:
        s.threads[st.thread] += st.count
        if thread is not None and st.thread != thread:
            continue
        s.selected += st.count
        if not st.frames:
            s.self_time["(native code, no Python frame)"] += st.count
            continue
        leaf = st.frames[-1]
        s.self_time[leaf.name] += st.count
        s.components[component(leaf.file)] += st.count
        work = callback_frames(st.frames)
        for name in {f.name for f in work}:
            s.inclusive[name] += st.count
        owner = next((f for f in reversed(work) if _is_heliox(f)), None)
        s.heliox_owner[owner.name if owner else "(outside Heliox: server, event loop)"] += st.count
    return s


def callback_frames(frames: list[Frame]) -> list[Frame]:
    """The frames of the event-loop callback being run (a task step, a granian callback).

    Every sample of the loop thread starts with the same start-up frames (the CLI, granian's
    worker, `run_forever`); they would top every inclusive list and say nothing.
    """
    for i in range(len(frames) - 1, -1, -1):
        f = frames[i]
        if f.file.endswith("asyncio/events.py") and f.func == "Handle._run":
            return frames[i + 1 :]
    for i in range(len(frames) - 1, -1, -1):
        f = frames[i]
        if f.file.endswith("asyncio/base_events.py") and f.func in _LOOP_FUNCS:
            return frames[i + 1 :]
    return frames


_LOOP_FUNCS = frozenset({"BaseEventLoop.run_forever", "BaseEventLoop._run_once"})
_ENTRY = frozenset({("heliox/cli.py", "main"), ("heliox/cli.py", "cmd_serve"),
                    ("heliox/__main__.py", "<module>")})  # fmt: skip


def _is_heliox(f: Frame) -> bool:
    # The CLI's entry frames sit under the event loop, not inside a request.
    return f.file.startswith("heliox/") and (f.file, f.func) not in _ENTRY


def _pct(n: int, of: int) -> str:
    return f"{100 * n / of:5.1f}%" if of else "  n/a"


def as_text(s: Summary, top: int = 20) -> str:
    out = [f"samples: {s.total} in all threads, {s.selected} in the thread summarised"]
    out.append("\nby thread:")
    out += [f"  {_pct(n, s.total)}  {name}" for name, n in s.threads.most_common()]
    sections: list[tuple[str, Counter[str]]] = [
        ("by component (leaf frame)", s.components),
        ("by innermost Heliox function (library time charged to its caller)", s.heliox_owner),
        ("self time (leaf function)", s.self_time),
        ("inclusive time (function anywhere in the running callback)", s.inclusive),
    ]
    for title, counter in sections:
        out.append(f"\n{title}:")
        out += [f"  {_pct(n, s.selected)}  {name}" for name, n in counter.most_common(top)]
    return "\n".join(out)
