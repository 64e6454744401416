"""The import graph of repnext/ and ablations/: no cycle (module- or function-level), and repnext imports
nothing of ablations (data flows one way: spec -> runs -> store -> tables)."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("repnext", "ablations")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (``from x import y``: x.y if a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, set(known)) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while not component or w != v:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def listing(graph: dict[str, set[str]]) -> str:
    return "\n".join(f"{m} -> {', '.join(sorted(graph[m])) or '(nothing of the project)'}" for m in sorted(graph))


def test_the_graph_is_read_from_every_kind_of_import():
    graph = import_graph()
    assert {"repnext", "repnext.models", "ablations", "ablations.render", "repnext.train"} <= set(graph)
    assert "repnext.store" in graph["repnext.train"]  # from .store import ... (module level)
    assert "repnext.export" in graph["repnext.latency"]  # from .export import export_coreml (in a function)
    assert "ablations" in graph["ablations.spec"]  # from . import NOTEBOOKS, SPECS (the package)
    assert "repnext.models" in graph["repnext.models.__main__"]  # from . import REGISTERED_MODELS
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycle():
    graph = import_graph()
    found = cycles(graph)
    assert not found, f"import cycles {found}; the graph:\n{listing(graph)}"


def test_repnext_imports_nothing_of_ablations():
    graph = import_graph()
    wrong = {m: sorted(d for d in deps if d.split(".")[0] == "ablations")
             for m, deps in graph.items() if m.split(".")[0] == "repnext"}
    assert not {m: d for m, d in wrong.items() if d}


if __name__ == "__main__":  # python tests/test_imports.py: the listing
    print(listing(import_graph()))
    print("cycles:", cycles(import_graph()) or "none")
