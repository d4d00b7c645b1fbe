"""The package's shape: small modules whose imports run one way, with no cycle."""

import ast
from pathlib import Path

import gemimg_async

PACKAGE = Path(gemimg_async.__file__).parent
MAX_LINES = 360  # "about 350"
LONG_BY_NATURE = {"_jsonstream"}  # one state machine, best read whole
# The pipeline, top to bottom: a module may import those below it, never those above.
PIPELINE = [
    ["_cli"],
    ["_bulk"],
    ["_client"],
    ["_fanout"],
    ["_generation"],
    ["_save", "_answer", "_dialects", "_transport", "_imagehost", "_limits", "_retry"],
    ["_sinks"],
]


def module_name(path: Path) -> str:
    """`_dialects.images` for gemimg_async/_dialects/images.py; `_dialects` for its __init__."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The package's own modules that `path` imports, at any level (functions, TYPE_CHECKING)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join([*base, *([node.module] if node.module else [])])
            found.add(target.lstrip(".") or ".")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gemimg_async."):
            found.add(node.module.removeprefix("gemimg_async."))
    return {top(target) for target in found if target not in (".", "")} - {top(name)}


def top(name: str) -> str:
    return name.split(".", maxsplit=1)[0]


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        edges.setdefault(top(module_name(path)) or "__init__", set()).update(imports_of(path))
    return edges


def test_no_module_is_much_over_350_lines():
    """Every module but the JSON streamer stays about 350 lines or under."""
    long = {
        module_name(path): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
        and module_name(path) not in LONG_BY_NATURE
    }
    assert long == {}


def test_imports_have_no_cycle():
    """No chain of imports between the package's modules leads back to where it started."""
    edges = graph()
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            assert state.get(nxt) != "open", " -> ".join([*trail, node, nxt])
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def test_the_pipeline_imports_downward_only():
    """facade -> generation -> dialect -> sink: no module imports one above it."""
    rank = {name: level for level, names in enumerate(PIPELINE) for name in names}
    edges = graph()
    upward = [
        f"{source} imports {target}"
        for source, targets in edges.items()
        for target in targets
        if source in rank and target in rank and rank[target] < rank[source]
    ]
    assert upward == []


def test_the_layout_test_sees_the_modules():
    """The graph knows the pipeline's modules and a subpackage, so the tests above bite."""
    edges = graph()
    assert {"_client", "_generation", "_dialects", "testing"} <= set(edges)
    assert "_generation" in edges["_client"]
    assert "_sinks" in edges["_answer"]
