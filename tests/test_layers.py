"""The layers, checked on the source: ``core/`` at the bottom imports nothing of ours above
it; ``models/`` is pure compute (no jobs, no serving, no I/O modules), so the same function
runs in a test, in process, in a Spark partition and in nearline; the funnel's jobs
(jobs/funnel, evaluate, precompute, configs) are on no import circle among jobs/ modules.

Every import counts, at module level or inside a function (a lazy import is still a
dependency). ``from models import funnel`` is read as an import of ``models.funnel``.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("core", "models", "jobs", "serve", "cli", "dags", "bench")
IO_MODULES = ("psycopg2", "pyspark", "airflow", "flask")
CORE_FOR_MODELS = ("core.constants",)  # plain values; core.db/lake/settings do I/O
FUNNEL_JOBS = ("jobs.funnel", "jobs.evaluate", "jobs.precompute", "jobs.configs")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``path``, relative ones resolved."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    return parse_imports(path.read_text(), package)


def parse_imports(source: str, package: list[str]) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``source``, a module of ``package``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            out.append((node.lineno, module))
            # ``from models import funnel``: the submodule is the dependency.
            if module in OURS or (node.level and not node.module):
                out += [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return out


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(package: str, allowed) -> list[str]:
    return [f"{p.relative_to(ROOT)}:{line} imports {m}"
            for p in files(package) for line, m in imports(p) if not allowed(m)]


def test_core_imports_nothing_of_ours_above_it():
    bad = violations("core", lambda m: not under(m, tuple(p for p in OURS if p != "core")))
    assert not bad, "core/ must not import from the layers above it:\n" + "\n".join(bad)


def test_models_are_pure_compute():
    def allowed(m: str) -> bool:
        if under(m, ("jobs", "serve", "cli", "dags", "bench") + IO_MODULES):
            return False
        return not under(m, ("core",)) or m == "core" or under(m, CORE_FOR_MODELS)

    bad = violations("models", allowed)
    assert not bad, ("models/ must not import jobs, serving or I/O modules "
                     "(core.db, core.lake, core.settings, psycopg2, pyspark):\n"
                     + "\n".join(bad))


def job_graph() -> dict[str, set[str]]:
    """jobs/ module -> the jobs/ modules it imports."""
    graph = {module_name(p): {m for _, m in imports(p) if under(m, ("jobs",))}
             for p in files("jobs")}
    return {k: {m for m in v if m in graph and m != k} for k, v in graph.items()}


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A shortest chain of imports from ``start`` back to itself, or None."""
    prev: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node]):
            if nxt == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(prev[chain[-1]])
                return [*reversed(chain), start]
            if nxt not in prev:
                prev[nxt] = node
                queue.append(nxt)
    return None


@pytest.mark.parametrize("module", FUNNEL_JOBS)
def test_funnel_jobs_import_each_other_without_a_cycle(module):
    cycle = cycle_through(job_graph(), module)
    assert cycle is None, "jobs import each other in a circle: " + " -> ".join(cycle)


def test_the_scanner_finds_lazy_and_relative_imports():
    source = "def f():\n    from jobs import funnel\n    import psycopg2\nfrom . import db\n"
    assert parse_imports(source, ["core"]) == [
        (4, "core"), (4, "core.db"), (2, "jobs"), (2, "jobs.funnel"), (3, "psycopg2")]
