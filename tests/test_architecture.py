"""The house plan, checked: no import circles in ``evalsuite/``, and a read side that imports no
lm-eval, transformers, torch or datasets (by its import graph, and by running it with them blocked).

The graph is built from the source (``ast``); imports under ``if TYPE_CHECKING:`` never run and
are skipped. What the read side imports counts module-level imports only: an import inside a
function runs when the function is called, which is how the run side is reached lazily. Circles
count every import, inside functions too: a module that calls back into one that imports it is a
circle of concepts even when a lazy import keeps Python from tripping on it (the issue's two,
runner/dryrun/speed/cache and dus/loading, are of that kind).
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "evalsuite"
STORE = REPO / "benchmarks" / "results" / "reference-smollm2" / "store"

#: What reading stored results must do without.
HEAVY = ("lm_eval", "transformers", "torch", "datasets")
#: The read side: reading, merging, aggregating, comparing and presenting stored results.
READ_SIDE = (
    "evalsuite", "evalsuite.store.records", "evalsuite.store.parquet_store", "evalsuite.store.run_views", "evalsuite.store.shards",
    "evalsuite.analysis.aggregation", "evalsuite.analysis.paired_stats", "evalsuite.analysis.leaderboard", "evalsuite.outputs.paper_table", "evalsuite.outputs.exports",
    "evalsuite.analysis.comparison", "evalsuite.tasks", "evalsuite.tasks.catalogue", "evalsuite.outputs.report",
    "evalsuite.outputs.report.charts", "evalsuite.outputs.report.comparability", "evalsuite.outputs.report.data", "evalsuite.outputs.report.sections",
    "evalsuite.cli", "evalsuite.cli.results", "evalsuite.cli.report", "evalsuite.cli.table",
    "evalsuite.cli.export", "evalsuite.cli.compare", "evalsuite.cli.baseline",
    "evalsuite.cli.tasks",
)
#: ``evalsuite.cli`` imports every command module to build its parser: each must be light at import.
COMMANDS = tuple(sorted(f"evalsuite.cli.{p.stem}" for p in (REPO / "evalsuite" / "commands").glob("[!_]*.py")))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(tree: ast.Module, *, in_functions: bool) -> list[ast.Import | ast.ImportFrom]:
    """The module's import statements: those run at import, plus those in functions if asked."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not in_functions:
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                walk(node.orelse)
            else:  # class bodies, try/except, if/else, with: they run at import
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        walk([child])
                    elif isinstance(child, ast.ExceptHandler):
                        walk(child.body)

    walk(tree.body)
    return found


def import_graph(*, in_functions: bool = False) -> dict[str, set[str]]:
    """module -> what it imports (at module level, or anywhere with ``in_functions``): evalsuite
    modules by full name, anything else by its top-level package name. ``from pkg import sub``
    names the submodule, and ``pkg`` itself only when a name imported from it is not a submodule."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8")), in_functions=in_functions):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                subs = [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in MODULES]
                targets = subs + ([module] if len(subs) < len(node.names) else [])
            for target in targets:
                if target.split(".")[0] != "evalsuite":
                    edges.add(target.split(".")[0])
                else:
                    while target not in MODULES:  # `import evalsuite.x.y` with y a name: its module
                        target = target.rpartition(".")[0]
                    if target != name:
                        edges.add(target)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def import_chain(graph: dict[str, set[str]], start: str, wanted: set[str]) -> list[str] | None:
    """The shortest chain of module-level imports from ``start`` to a module in ``wanted``.
    Importing ``a.b.c`` runs ``a`` and ``a.b`` first, so a module's packages are on its way."""
    def following(module: str) -> list[str]:
        parts = module.split(".")
        parents = [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES]
        return parents + sorted(graph.get(module, ()))

    came: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        module = queue.pop(0)
        if module in wanted:
            chain = [module]
            while (before := came[chain[-1]]) is not None:
                chain.append(before)
            return chain[::-1]
        for nxt in following(module):
            if nxt not in came:
                came[nxt] = module
                queue.append(nxt)
    return None


def test_the_graph_sees_the_imports():
    """The checker itself: it finds what is plainly there (so the tests below can fail)."""
    graph = import_graph()
    assert {"evalsuite.store.records", "evalsuite.store.parquet_store"} <= graph["evalsuite.store.run_views"]
    assert "lm_eval" in graph["evalsuite.tasks.fewshot"]
    assert import_chain(graph, "evalsuite.tasks.lm_adapter", {"lm_eval"})[-2:] == ["evalsuite.tasks.fewshot", "lm_eval"]
    assert "evalsuite.run.evaluation" not in graph["evalsuite.cli"]  # imported inside a handler only
    assert "evalsuite.run.evaluation" in import_graph(in_functions=True)["evalsuite.cli"]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = import_cycles(import_graph(in_functions=True))
    assert not cycles, "import circles in evalsuite/: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(set(READ_SIDE + COMMANDS)))
def test_read_side_imports_no_model_libraries(module):
    assert module in MODULES
    chain = import_chain(import_graph(), module, set(HEAVY))
    assert chain is None, f"{module} imports {chain[-1]} at import time: {' -> '.join(chain)}"


#: Run as ``python -c``: model libraries cannot be imported, then the CLI runs.
_BLOCKED_CLI = textwrap.dedent("""
    import sys
    class Blocked:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {blocked!r}:
                raise ImportError(f"{{name}} is blocked: the read side must not import it")
            return None
    sys.meta_path.insert(0, Blocked())
    from evalsuite.cli import main
    code = main(sys.argv[1:])
    loaded = sorted({{m.split(".")[0] for m in sys.modules}} & {blocked!r})
    assert not loaded, loaded
    sys.exit(code)
""").format(blocked=set(HEAVY))


def _cli(*args: str, code: str = _BLOCKED_CLI) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300,
                          cwd=REPO)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """The committed reference run (SmolLM2, six tasks), copied: tests never write into the repo."""
    copy = tmp_path_factory.mktemp("reference") / "store"
    shutil.copytree(STORE, copy)
    return copy


def test_reading_works_with_model_libraries_blocked(store, tmp_path):
    """results, table, report and export on a real stored run, with lm-eval, transformers, torch and
    datasets impossible to import (what a machine with only pandas, pyarrow, jinja2 and matplotlib has)."""
    shown = _cli("results", "--results-dir", str(store))
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "smollm2" in shown.stdout and "1.50" in shown.stdout  # GSM8K of the reference run
    table = _cli("table", "--results-dir", str(store))
    assert table.returncode == 0, table.stderr[-3000:]
    assert "| smollm2 |" in table.stdout
    report = tmp_path / "report.html"
    made = _cli("report", "--results-dir", str(store), "--out", str(report))
    assert made.returncode == 0, made.stderr[-3000:]
    assert "smollm2" in report.read_text(encoding="utf-8")
    gsm8k_run = next(p.name.split("__")[0] for p in (store / "scores").glob("*__gsm8k.parquet"))
    out = tmp_path / "export"
    exported = _cli("export", gsm8k_run, "--results-dir", str(store), "--out", str(out), "--allow-limited")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert {"results.json", "scores.csv", "model-index.yaml"} <= {p.name for p in out.iterdir()}
    listed = _cli("tasks")
    assert listed.returncode == 0 and "leaderboard suite" in listed.stdout, listed.stderr[-3000:]


def test_the_blocker_blocks():
    """The blocked run really fails where a model library is needed (else the test above proves nothing)."""
    proc = _cli("prompts", "--task", "arc", "--limit", "1")
    assert proc.returncode != 0 and "is blocked" in proc.stderr, proc.stderr[-3000:]


#: Run as ``python -c``: the installed transformers reports a release older than supported.
_OLD_TRANSFORMERS = textwrap.dedent("""
    import importlib.metadata as metadata, sys
    real = metadata.version
    metadata.version = lambda name: "4.40.0" if name == "transformers" else real(name)
    from evalsuite.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_version_check_is_where_a_model_is_evaluated(store, tmp_path, data_dir):
    """An unsupported transformers does not stop reading results; it stops a run, in one line."""
    shown = _cli("results", "--results-dir", str(store), code=_OLD_TRANSFORMERS)
    assert shown.returncode == 0 and "smollm2" in shown.stdout, shown.stderr[-3000:]
    for extra in ([], ["--dry-run"]):
        run = _cli("run", "--models", "smollm2", "--tasks", "arc", "--limit", "1", "--data-dir", str(data_dir),
                   "--results-dir", str(tmp_path / "r"), *extra, code=_OLD_TRANSFORMERS)
        err = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(err) == 1, run.stderr[-3000:]
        assert "transformers>=4.56" in err[0] and "4.40.0 is installed" in err[0]
    assert not (tmp_path / "r" / "runs").exists() or not any((tmp_path / "r" / "runs").iterdir())
