"""The one-way rule, checked on the source: ``backend -> training -> sag``, and no import circle inside a package.

Every ``import`` statement of ``backend/``, ``training/`` and ``sag/`` counts, wherever it stands (module level,
inside a function, under ``if TYPE_CHECKING``), absolute (``backend.x``, ``training.x``, ``sag.x``) or relative
(``from .x import y``, ``from . import x``, ``from ..base import y``). An import names the deepest module it reaches:
``from training.datasets import label_studio`` is an edge to ``training.datasets.label_studio``, ``from sag import
SaG`` one to ``sag`` (its ``__init__``).

- An import that points up (``sag`` -> ``training`` or ``backend``, ``training`` -> ``backend``) fails.
- A circle between modules of one package fails, unless it is exactly one of ``KNOWN_CYCLES``; an entry that no
  longer matches a circle fails too, so the list only shrinks.
- Inside ``backend``, layers point down too (``BACKEND_LAYERS``): the entry points, then ``backend.finetune``, the
  HTTP boundary, the serving path, ``backend.labelstudio`` and the foundation. So ``backend.labelstudio`` imports
  neither fine-tuning nor serving, and the serving path reaches fine-tuning only through the entry points. Every
  backend module must be in a layer, and none may import ``backend.training_jobs`` (kept only for queued jobs).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("sag", "training", "backend")  # lowest first: a package may import only those before it

# Circles that exist today outside backend/, each the exact set of modules of one strongly connected component.
# To be removed by the sag/training half of the clean-up.
KNOWN_CYCLES: set[frozenset[str]] = set()


# backend/'s layers, lowest first: a module imports only backend modules of its own layer and of those before it. A
# layer is a set of modules, or a subpackage (every module under it). The serving path does reach fine-tuning, but only
# at the top: app registers the training routes and builds the TrainingService that model.SaGModel.fit hands Label
# Studio's webhook events to.
BACKEND_LAYERS: tuple[tuple[str, frozenset[str] | str], ...] = (
    ("the foundation", frozenset({"backend.exceptions", "backend.redact", "backend.keys", "backend.settings",
                                  "backend.logs", "backend.cache", "backend.versions"})),
    ("backend.labelstudio", "backend.labelstudio"),
    ("the serving path", frozenset({"backend.predictions", "backend.dispatch", "backend.jobs", "backend.liveness",
                                    "backend.runtime", "backend.predictor", "backend.batches", "backend.presets",
                                    "backend.images", "backend.transport"})),
    ("the HTTP boundary", frozenset({"backend.http_input"})),
    ("backend.finetune", "backend.finetune"),
    ("the entry points", frozenset({"backend", "backend.app", "backend.worker", "backend.model",
                                    "backend.training_jobs"})),
)
# Old module paths kept importable only because RQ names them in jobs already queued: nothing may import them.
RQ_ALIASES = frozenset({"backend.training_jobs"})


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages (a package is its ``__init__``)."""
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The modules of the three packages that ``name`` imports, each with the line of its first import."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target and target not in modules:  # ``a.b.SomeClass`` -> ``a.b``
            target = target.rpartition(".")[0]
        if target and target != name:
            found.setdefault(target, line)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                add(submodule if submodule in modules else source, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """Module -> {imported module: line}, over ``sag``, ``training`` and ``backend``."""
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _package(module: str) -> str:
    return module.split(".")[0]


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    """Every import from a lower package into a higher one, as ``file:line: a imports b``."""
    rank = {package: i for i, package in enumerate(LAYERS)}
    modules = _modules()
    return [f"{modules[source].relative_to(ROOT)}:{line}: {source} imports {target}, but {_package(source)} must "
            f"not import {_package(target)}"
            for source, targets in sorted(graph.items()) for target, line in sorted(targets.items())
            if rank[_package(target)] > rank[_package(source)]]


def backend_layer(module: str) -> int | None:
    """The index in ``BACKEND_LAYERS`` of a backend module's layer, or None when it is in none."""
    for index, (_, members) in enumerate(BACKEND_LAYERS):
        if module in members if isinstance(members, frozenset) else (module == members
                                                                     or module.startswith(members + ".")):
            return index
    return None


def backend_layer_violations(graph: dict[str, dict[str, int]]) -> list[str]:
    """Every backend module outside the layers, every import of a higher backend layer, and every import of an
    RQ alias, as ``file:line: ...``."""
    modules = _modules()
    found = []
    for source in sorted(m for m in graph if _package(m) == "backend"):
        where = modules[source].relative_to(ROOT)
        rank = backend_layer(source)
        if rank is None:
            found.append(f"{where}: {source} is in no layer of BACKEND_LAYERS (tests/test_architecture.py): add it "
                         "to the one it belongs to")
            continue
        for target, line in sorted(graph[source].items()):
            if _package(target) != "backend":
                continue
            if target in RQ_ALIASES:
                found.append(f"{where}:{line}: {source} imports {target}, which exists only for RQ jobs queued "
                             "before a move; import the module it re-exports")
                continue
            target_rank = backend_layer(target)
            if target_rank is not None and target_rank > rank:
                found.append(f"{where}:{line}: {source} ({BACKEND_LAYERS[rank][0]}) imports {target} "
                             f"({BACKEND_LAYERS[target_rank][0]}), a layer above it")
    return found


def package_cycles(graph: dict[str, dict[str, int]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module among imports inside each package (Tarjan)."""
    inside = {m: [t for t in targets if _package(t) == _package(m)] for m, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[frozenset[str]] = []

    def visit(start: str) -> None:  # iterative, so a deep graph cannot hit the recursion limit
        work = [(start, iter(inside[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(inside[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(frozenset(component))

    for module in sorted(inside):
        if module not in index:
            visit(module)
    return components


def describe_cycle(component: frozenset[str], graph: dict[str, dict[str, int]]) -> str:
    """One circle through ``component`` (``a -> b -> a``, with the line of each import) and its members."""
    modules = _modules()
    start = min(component)
    path, seen = [start], {start}
    # Walk inside the component until a module repeats: in a strongly connected component there is always a way on.
    while True:
        here = path[-1]
        step = sorted(t for t in graph[here] if t in component)
        nxt = next((t for t in step if t == start), None) or next((t for t in step if t not in seen), step[0])
        path.append(nxt)
        if nxt in seen:
            break
        seen.add(nxt)
    loop = path[path.index(path[-1]):]
    hops = " -> ".join(f"{a} ({modules[a].relative_to(ROOT)}:{graph[a][b]})" for a, b in zip(loop, loop[1:]))
    return f"{hops} -> {loop[-1]}; the circle's modules: {', '.join(sorted(component))}"


def test_imports_point_down_only():
    violations = upward_imports(import_graph())
    assert not violations, "imports that point up (backend -> training -> sag only):\n  " + "\n  ".join(violations)


def test_backend_layers_point_down_only():
    violations = backend_layer_violations(import_graph())
    assert not violations, ("backend/ imports that break its layers (BACKEND_LAYERS, lowest first: "
                            + ", ".join(name for name, _ in BACKEND_LAYERS) + "):\n  " + "\n  ".join(violations))


def test_no_import_cycle_inside_a_package():
    graph = import_graph()
    new = [c for c in package_cycles(graph) if c not in KNOWN_CYCLES]
    assert not new, ("import circles inside a package (break each one; KNOWN_CYCLES is for the listed old ones "
                     "only):\n  " + "\n  ".join(describe_cycle(c, graph) for c in sorted(new, key=sorted)))


def test_known_cycles_still_exist():
    """A circle that has been broken must leave KNOWN_CYCLES, so that it cannot come back unnoticed."""
    stale = KNOWN_CYCLES - set(package_cycles(import_graph()))
    assert not stale, ("KNOWN_CYCLES lists circles that are gone (or have changed): remove them from "
                       "tests/test_architecture.py:\n  " + "\n  ".join(", ".join(sorted(c)) for c in stale))


# The model and what it is made of must not reach the text-to-mask pipeline above it: the pipeline calls the model,
# never the other way (an import inside a method would hide such a circle from a run, not from this check).
ABOVE_THE_MODEL = ("sag.pipeline", "sag.spatial")


def import_closure(graph: dict[str, dict[str, int]], start: str) -> dict[str, list[str]]:
    """Every module ``start`` reaches through imports (at any depth, wherever the import stands), each with one
    chain of imports that reaches it: {module: [start, ..., module]}."""
    chains = {start: [start]}
    todo = [start]
    while todo:
        here = todo.pop()
        for target in sorted(graph.get(here, {})):
            if target not in chains:
                chains[target] = chains[here] + [target]
                todo.append(target)
    return chains


def test_the_model_does_not_import_the_pipeline_above_it():
    chains = import_closure(import_graph(), "sag.model")
    reached = [" -> ".join(chains[m]) for m in ABOVE_THE_MODEL if m in chains]
    assert not reached, ("sag/model.py reaches the pipeline that calls it (sag.pipeline calls the model, the model "
                         "imports none of it):\n  " + "\n  ".join(reached))


def write_tree(root: Path, files: dict[str, str], monkeypatch) -> None:
    """Write a source tree of ``files`` (path -> text) under ``root`` and point this module's checks at it."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    monkeypatch.setitem(globals(), "ROOT", root)


def test_the_checker_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The scanner itself: relative, absolute, inside functions, ``from package import module``, and upward ones."""
    files = {
        "sag/__init__.py": "from .a import A\n",
        "sag/a.py": "def f():\n    from . import b\nA = 1\n",
        "sag/b.py": "from sag.a import A\n",
        "training/__init__.py": "",
        "training/datasets/__init__.py": "",
        "training/datasets/x.py": "from ..y import Y\n",
        "training/y.py": "import training.datasets.x\nY = 1\n",
        "backend/__init__.py": "",
        "backend/c.py": "import sag\n",
    }
    write_tree(tmp_path, {**files, "sag/d.py": "from backend import c\n"}, monkeypatch)
    graph = import_graph()
    assert graph["sag.a"] == {"sag.b": 2} and graph["sag.b"] == {"sag.a": 1}
    assert graph["training.datasets.x"] == {"training.y": 1}
    assert graph["backend.c"] == {"sag": 1}
    assert set(package_cycles(graph)) == {frozenset({"sag.a", "sag.b"}),
                                         frozenset({"training.y", "training.datasets.x"})}
    assert upward_imports(graph) == ["sag/d.py:1: sag.d imports backend.c, but sag must not import backend"]
    assert describe_cycle(frozenset({"sag.a", "sag.b"}), graph) == (
        "sag.a (sag/a.py:2) -> sag.b (sag/b.py:1) -> sag.a; the circle's modules: sag.a, sag.b")
    assert import_closure(graph, "training.y") == {"training.y": ["training.y"],
                                                   "training.datasets.x": ["training.y", "training.datasets.x"]}
    assert set(import_closure(graph, "backend.c")) == {"backend.c", "sag", "sag.a", "sag.b"}


def test_the_backend_layer_check_sees_each_kind_of_break(tmp_path, monkeypatch):
    """The layer rule itself: Label Studio code importing fine-tuning or serving, serving importing fine-tuning, a
    module in no layer, and an import of an RQ alias are each reported; imports downward are not."""
    files = {
        "sag/__init__.py": "",
        "training/__init__.py": "",
        "backend/__init__.py": "",
        "backend/app.py": "from .finetune import routes\nfrom . import predictions\n",
        "backend/exceptions.py": "",
        "backend/predictions.py": "from .labelstudio.client import Client\nfrom .finetune.job import run\n",
        "backend/labelstudio/__init__.py": "",
        "backend/labelstudio/client.py": "from ..exceptions import E\nfrom ..predictions import P\n",
        "backend/labelstudio/results.py": "def f():\n    from backend.finetune import job\n",
        "backend/finetune/__init__.py": "",
        "backend/finetune/routes.py": "from .job import run\nfrom ..labelstudio import client\n",
        "backend/finetune/job.py": "from ..predictions import P\nfrom ..exceptions import E\n",
        "backend/training_jobs.py": "from .finetune.job import run\n",
        "backend/stray.py": "",
        "backend/worker.py": "from .training_jobs import run\n",
    }
    write_tree(tmp_path, files, monkeypatch)
    assert backend_layer_violations(import_graph()) == [
        "backend/labelstudio/client.py:2: backend.labelstudio.client (backend.labelstudio) imports "
        "backend.predictions (the serving path), a layer above it",
        "backend/labelstudio/results.py:2: backend.labelstudio.results (backend.labelstudio) imports "
        "backend.finetune.job (backend.finetune), a layer above it",
        "backend/predictions.py:2: backend.predictions (the serving path) imports backend.finetune.job "
        "(backend.finetune), a layer above it",
        "backend/stray.py: backend.stray is in no layer of BACKEND_LAYERS (tests/test_architecture.py): add it to "
        "the one it belongs to",
        "backend/worker.py:1: backend.worker imports backend.training_jobs, which exists only for RQ jobs queued "
        "before a move; import the module it re-exports",
    ]
