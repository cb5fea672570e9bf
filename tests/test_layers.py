"""The import structure of `heliox` is layered: no import of a higher layer, no import cycle.

Every module under src/heliox is parsed with `ast` (nothing is imported), and each import in it,
at module level or inside a function, becomes an edge of the graph, `from . import x` forms
resolved. Three rules:

- an edge goes to a lower layer, or stays inside its own layer (LAYERS below, lowest first).
  Two different layers of the same level are independent: neither may import the other;
- no cycle between modules, even inside one layer (modules in a cycle are one module in
  several files: none can be loaded, tested or understood without the others);
- the gateway names no backend (NOT_NAMED): it reaches Redis and the database only through the
  state and db layers, whose functions and exceptions (e.g. `CacheUnavailable`) are its interface.

Imports under `if TYPE_CHECKING:` are exempt from the cycle rule (they never run, so they
cannot make an import order matter) but not from the layer rule: a type from a higher layer is
still a dependency on it. A new module must be given a layer here, or the test fails.

Run alone: `.venv/bin/pytest tests/test_layers.py` (it also runs with the whole suite).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "heliox"


@dataclass(frozen=True)
class Layer:
    level: int
    name: str
    # "heliox.x.*" is the package heliox.x and everything under it; "heliox.y" that module only.
    modules: tuple[str, ...]
    why: str


LAYERS = (
    Layer(
        0,
        "core",
        ("heliox", "heliox.core.*", "heliox.snapshot"),
        "pure logic and pure data, no I/O: the HTTP caching rules, rate limits, quotas, the abuse "
        "detector, and the immutable config snapshot they decide on; `heliox` itself holds only "
        "the version",
    ),
    Layer(
        0,
        "example upstream",
        ("heliox.upstream.*",),
        "the stand-alone example upstream app (`heliox upstream`): imports nothing else of heliox",
    ),
    Layer(
        1,
        "base",
        ("heliox.config", "heliox.metrics", "heliox.memory_trim", "heliox.structured_log"),
        "settings, metric counters, the heap trim and the log formats (LOG_FORMAT, the access "
        "log's writer): leaves every layer above may use",
    ),
    Layer(
        2,
        "state",
        ("heliox.state.*",),
        "the shared-state backends (in process or Redis): admission, cache, negative cache, "
        "locks, the Redis client; independent of the database",
    ),
    Layer(
        2,
        "db",
        ("heliox.db.*",),
        "the database: models, engine, migrations, the queries; independent of the state backends",
    ),
    Layer(
        3,
        "upstream client",
        ("heliox.net.*",),
        "the HTTP client to upstreams and its bulkheads; owned by the runtime, used by the gateway",
    ),
    Layer(
        3,
        "jobs",
        ("heliox.jobs", "heliox.worker"),
        "the periodic jobs and their scheduler: `heliox worker` runs them on their own, and the "
        "runtime runs the same scheduler in process (BACKGROUND_JOBS), so both sit below it",
    ),
    Layer(
        3,
        "seed",
        ("heliox.seed",),
        "the demo data written at start-up (AUTO_SEED) or by `heliox seed`",
    ),
    Layer(
        4,
        "runtime",
        ("heliox.runtime",),
        "what one gateway process holds and starts: backends, upstream client, jobs, config reload",
    ),
    Layer(
        5,
        "gateway",
        ("heliox.gateway.*",),
        "the request hot path: admission, cache layer, proxying, abuse monitoring",
    ),
    Layer(
        6,
        "admin",
        ("heliox.admin.*",),
        "the admin API (it may drive the gateway's cache, e.g. a purge)",
    ),
    Layer(
        7,
        "ui",
        ("heliox.ui.*",),
        "the web UI, built on the admin API's authentication and throttling",
    ),
    Layer(
        8,
        "app",
        ("heliox.main", "heliox.connection_guard", "heliox.graceful_shutdown"),
        "the ASGI application: gateway, admin API and UI assembled on one runtime, and the "
        "layers `heliox serve` adds around them (the serving socket guard, the shutdown deadline)",
    ),
    Layer(
        9,
        "commands",
        (
            "heliox.cli",
            "heliox.__main__",
            "heliox.cli_runtime",
            "heliox.metrics_port",
        ),
        "the `heliox` command and what only it uses (the metrics port, the admin context of its "
        "one-shot commands)",
    ),
)

# (importer, imported): why this upward edge or cycle is accepted. Keep it empty if at all possible.
ALLOWED: dict[tuple[str, str], str] = {}

# Layer -> what its modules may not import at all (a package, a module, or anything under it).
NOT_NAMED: dict[str, tuple[str, ...]] = {
    "gateway": ("redis", "sqlalchemy", "asyncpg", "aiosqlite", "heliox.db.models"),
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: Path
    line: int
    type_checking: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(SRC.parent)}:{self.line}"


def module_files() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package's __init__)."""
    out: dict[str, tuple[Path, bool]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        out[".".join(parts)] = (path, is_package)
    return out


MODULES = module_files()


def _known(name: str) -> str | None:
    """`name`, or the closest enclosing module of it that is in heliox (None: not heliox's)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        found = (_known(alias.name) for alias in node.names)
        return [name for name in found if name]
    if node.level:  # relative: from the module's own package, one level up per extra dot
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - (node.level - 1)])
        prefix = f"{base}.{node.module}" if node.module else base
    else:
        prefix = node.module or ""
    out = []
    for alias in node.names:
        # `from heliox.state import cache` imports the module heliox.state.cache
        name = _known(f"{prefix}.{alias.name}")
        if name != f"{prefix}.{alias.name}":
            name = _known(prefix)
        if name:
            out.append(name)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, type_checking: bool = False) -> list[tuple[ast.AST, bool]]:
    out: list[tuple[ast.AST, bool]] = []
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.Import | ast.ImportFrom):
            out.append((child, type_checking))
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                out.extend(_imports(ast.Module(body=[stmt], type_ignores=[]), True))
            for stmt in child.orelse:
                out.extend(_imports(ast.Module(body=[stmt], type_ignores=[]), type_checking))
        else:
            out.extend(_imports(child, type_checking))
    return out


def import_graph() -> list[Edge]:
    edges = []
    for module, (path, is_package) in MODULES.items():
        tree = ast.parse(path.read_text("utf-8"), filename=str(path))
        for node, type_checking in _imports(tree):
            assert isinstance(node, ast.Import | ast.ImportFrom)
            for target in _targets(module, is_package, node):
                if target != module:
                    edges.append(Edge(module, target, path, node.lineno, type_checking))
    return edges


def layer_of(module: str) -> Layer | None:
    best: tuple[int, Layer] | None = None
    for layer in LAYERS:
        for pattern in layer.modules:
            if pattern.endswith(".*"):
                package = pattern[:-2]
                matches = module == package or module.startswith(package + ".")
            else:
                matches = module == pattern
            if matches and (best is None or len(pattern) > best[0]):
                best = (len(pattern), layer)
    return best[1] if best else None


def describe(layer: Layer) -> str:
    return f"layer {layer.level} '{layer.name}'"


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in MODULES if layer_of(m) is None)
    assert not missing, (
        "modules with no layer; add each to LAYERS in tests/test_layers.py: " + ", ".join(missing)
    )


def test_the_graph_is_read() -> None:
    """The parser finds the imports it must (else the rules below would pass vacuously)."""
    edges = {(e.source, e.target) for e in import_graph()}
    assert ("heliox.gateway.app", "heliox.runtime") in edges  # module level
    assert ("heliox.cli", "heliox.worker") in edges  # inside a function
    assert ("heliox.gateway.abuse", "heliox.runtime") in edges  # under TYPE_CHECKING
    assert ("heliox.main", "heliox") in edges  # from heliox import __version__
    assert len(edges) > 200


def test_no_module_imports_a_higher_layer() -> None:
    problems = []
    for edge in import_graph():
        if (edge.source, edge.target) in ALLOWED:
            continue
        source, target = layer_of(edge.source), layer_of(edge.target)
        if source is None or target is None or source == target or target.level < source.level:
            continue
        kind = "a higher layer" if target.level > source.level else "a sibling layer"
        problems.append(
            f"{edge.where}: {edge.source} ({describe(source)}) imports {edge.target} "
            f"({describe(target)}), {kind}"
            + (" [under TYPE_CHECKING]" if edge.type_checking else "")
        )
    assert not problems, (
        "imports against the layering (tests/test_layers.py LAYERS says why each layer is where "
        "it is; move the code down, or record the edge in ALLOWED with the reason):\n  "
        + "\n  ".join(problems)
    )


def test_the_gateway_names_no_backend() -> None:
    problems = []
    for module, (path, _) in MODULES.items():
        layer = layer_of(module)
        if layer is None or layer.name not in NOT_NAMED:
            continue
        banned = NOT_NAMED[layer.name]
        for node, _type_checking in _imports(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            hits = [b for b in banned for n in names if n == b or n.startswith(b + ".")]
            if hits:
                problems.append(
                    f"{path.relative_to(SRC.parent)}:{node.lineno}: {module} imports {names[0]}"
                    f" (layer '{layer.name}' may not name {hits[0]})"
                )
    assert not problems, (
        "backends named where NOT_NAMED in tests/test_layers.py forbids it (go through the "
        "state or db layer):\n  " + "\n  ".join(problems)
    )


def _cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    graph: dict[str, dict[str, Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.source, {}).setdefault(edge.target, edge)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)

    out = []
    for component in components:
        members = set(component)
        start = min(component)
        # Shortest way back to `start` inside the component: the cycle to report.
        came_from: dict[str, Edge] = {}
        frontier = [start]
        while frontier and start not in came_from:
            following = []
            for node in frontier:
                for nxt, edge in sorted(graph.get(node, {}).items()):
                    if nxt in members and nxt not in came_from:
                        came_from[nxt] = edge
                        following.append(nxt)
            frontier = following
        cycle = [came_from[start]]
        while cycle[-1].source != start:
            cycle.append(came_from[cycle[-1].source])
        out.append(cycle[::-1])
    return out


def test_no_import_cycles() -> None:
    edges = [
        e for e in import_graph() if not e.type_checking and (e.source, e.target) not in ALLOWED
    ]
    cycles = _cycles(edges)
    assert not cycles, (
        "import cycles (each module imports the next; break one edge):\n"
        + "\n".join(
            "  "
            + " -> ".join([cycle[0].source, *(e.target for e in cycle)])
            + "\n    "
            + "\n    ".join(f"{e.where}: {e.source} imports {e.target}" for e in cycle)
            for cycle in cycles
        )
    )


def test_every_allowed_edge_still_exists() -> None:
    """An exception whose import is gone is removed, so that it cannot come back unseen."""
    edges = {(e.source, e.target) for e in import_graph()}
    gone = sorted(edge for edge in ALLOWED if edge not in edges)
    assert not gone, f"no longer imported; remove from ALLOWED: {gone}"
