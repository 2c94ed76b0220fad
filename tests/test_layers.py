"""The architecture holds: the library never imports the study, the report or the pipeline; committed results name
a clean commit of this history; notebooks refuse parameters they do not declare."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from repro._source import imported_names, module_name
from repro.results import load, repo_root

from .conftest import needs_deepsec

ROOT = repo_root()
LIBRARY = ("repro/data.py", "repro/results.py", "repro/_io.py", "repro/models", "repro/attacks", "repro/metrics",
           "repro/train")
# What each layer may not import (lower layers never import higher ones).
FORBIDDEN = {
    "library": ("repro.study", "repro.report", "repro.pipeline"),
    "repro/study": ("repro.report", "repro.pipeline"),
    "repro/report": ("repro.pipeline",),
}


def _imports(path: Path) -> set[str]:
    """Absolute names of the repro modules ``path`` imports (relative imports resolved), by the same reader the
    fingerprints use (:func:`repro._source.imported_names`)."""
    return imported_names(path.read_text(encoding="utf-8"), module=module_name(path))


def _files(*places: str) -> list[Path]:
    out = []
    for place in places:
        p = ROOT / place
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    # Command-line entry points sit on top of every layer (STYLE: only __main__ parses a command line).
    return [f for f in out if f.name != "__main__.py"]


@pytest.mark.parametrize("layer", list(FORBIDDEN))
def test_no_layer_imports_a_layer_above_it(layer):
    files = _files(*LIBRARY) if layer == "library" else _files(layer)
    assert files
    bad = {str(f.relative_to(ROOT)): sorted(n for n in _imports(f) if n.startswith(FORBIDDEN[layer]))
           for f in files}
    assert not {k: v for k, v in bad.items() if v}, bad


def test_the_import_check_can_fail(monkeypatch):
    """The checker sees relative and absolute imports of a higher layer (a test that cannot fail is a defect): a
    library module planted with both is reported, and the layer test fails on it."""
    planted = ROOT / "repro" / "train" / "config.py"
    source = planted.read_text(encoding="utf-8") + "\nfrom ..study import plan\nimport repro.report.pages\n"
    real_read = Path.read_text
    monkeypatch.setattr(Path, "read_text",
                        lambda self, *a, **k: source if self == planted else real_read(self, *a, **k))
    assert {"repro.study.plan", "repro.report.pages"} <= _imports(planted)
    with pytest.raises(AssertionError, match="repro/train/config.py"):
        test_no_layer_imports_a_layer_above_it("library")


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


COMMITTED = sorted((ROOT / "results").glob("*/*.json"))


@pytest.mark.skipif(_git("rev-parse", "HEAD").returncode != 0, reason="not a git checkout: provenance not checkable")
@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_committed_results_name_a_clean_commit_of_this_history(path):
    result = load(path)
    git = result.provenance["git"]
    assert git["dirty"] is False, f"{path} was computed from a tree with uncommitted changes"
    assert git["commit"], f"{path} records no commit"
    if _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true" and \
            _git("cat-file", "-e", f"{git['commit']}^{{commit}}").returncode != 0:
        pytest.skip("shallow clone: the recorded commit is not fetched")
    done = _git("merge-base", "--is-ancestor", git["commit"], "HEAD")
    assert done.returncode == 0, f"{path} names commit {git['commit']}, which is not an ancestor of HEAD"


@needs_deepsec
def test_papermill_with_an_unknown_parameter_fails_naming_it(tmp_path):
    """`papermill notebooks/pgd.ipynb out.ipynb -p epss 8`: papermill only warns; the notebook refuses."""
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match=r"unknown notebook parameter\(s\) 'epss'.*allowed:"
                       r".*'eps'"):
        papermill.execute_notebook(str(ROOT / "notebooks" / "pgd.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"epss": 8, "profile": "smoke", "results_dir": str(tmp_path)},
                                   cwd=str(ROOT), kernel_name="python3", progress_bar=False)


# ------------------------------------------------------------------------------- private names stay in their module
def _is_private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def _private_uses(path: Path) -> set[tuple[str, str]]:
    """``(importer, name)`` for each private name ``path`` takes from another module: ``from m import _x``,
    ``m._x`` on an imported repro module, or any name from a private module of a package the importer is not in."""
    import ast

    from repro._source import module_file

    me = module_name(path)
    package = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules: dict[str, str] = {}  # local name → repro module it is bound to
    found: set[tuple[str, str]] = set()

    def check_module(target: str) -> None:
        parts = target.split(".")
        for i, part in enumerate(parts):
            if _is_private(part) and ".".join(package[:i]) != ".".join(parts[:i]) and target != me:
                found.add((me, target))

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if not target.startswith("repro"):
                continue
            check_module(target)
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if module_file(full) is not None:
                    check_module(full)
                    modules[alias.asname or alias.name] = full
                elif _is_private(alias.name) and target != me:
                    found.add((me, full))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("repro"):
                    check_module(alias.name)
                    modules[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                and _is_private(node.attr) and modules[node.value.id] != me:
            found.add((me, f"{modules[node.value.id]}.{node.attr}"))
    return found


def _all_private_uses() -> set[tuple[str, str]]:
    return {use for f in _files("repro") for use in _private_uses(f)}


def test_no_module_uses_another_modules_private_names():
    uses = _all_private_uses()
    assert not uses, sorted(uses)


@pytest.mark.parametrize("planted, expected", [
    ("from .steps import _data_record\n", "repro.study.steps._data_record"),
    ("from . import steps as s\nx = s._data_record\n", "repro.study.steps._data_record"),
    ("from ..attacks._common import check_device\n", "repro.attacks._common"),
    ("from .. import _io\n", None),  # a private module of a package the importer is in: allowed
])
def test_the_private_name_check_can_fail(monkeypatch, planted, expected):
    target = ROOT / "repro" / "study" / "claims.py"
    source = target.read_text(encoding="utf-8") + "\n" + planted
    real_read = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source if self == target else real_read(self, *a, **k))
    uses = {name for _, name in _private_uses(target)}
    if expected is None:
        assert not uses
    else:
        assert expected in uses
        with pytest.raises(AssertionError, match=expected.replace(".", r"\.")):
            test_no_module_uses_another_modules_private_names()


def _benchmark_private_uses(source: str) -> set[str]:
    """Private repro names a benchmark script uses (``from repro.x import _y`` or ``m._y`` on an imported repro
    module): benchmarks call the public API, so a refactor of a private helper cannot silently break them."""
    import ast

    tree, modules, found = ast.parse(source), {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("repro"):
            for alias in node.names:
                if _is_private(alias.name):
                    found.add(f"{node.module}.{alias.name}")
                modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            modules.update({a.asname or a.name: a.name for a in node.names if a.name.startswith("repro")})
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                and _is_private(node.attr):
            found.add(f"{modules[node.value.id]}.{node.attr}")
    return found


def test_benchmarks_use_only_public_names():
    # Before: benchmarks/metrics.py called repro.metrics.attack._predict, which moved to repro.metrics.checks.
    used = {f.name: _benchmark_private_uses(f.read_text(encoding="utf-8")) for f in (ROOT / "benchmarks").glob("*.py")}
    assert not {k: v for k, v in used.items() if v}, used
    assert _benchmark_private_uses("from repro.metrics import attack as M\nM._predict(1)\n") == \
        {"repro.metrics.attack._predict"}


# ------------------------------------------------------------------------------ column ids live in the plan only
def _column_ids_in(source: str) -> set[str]:
    """The plan's column ids that ``source`` spells as a string constant (or inside an f-string)."""
    import ast

    from repro.results import KINDS
    from repro.study.plan import COLUMNS

    # "findings" is a column, a table and a kind of run alike: only the ids that name nothing else are checked
    ids = set(COLUMNS) - {c.table for c in COLUMNS.values()} - set(KINDS)
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found |= {i for i in ids if i == node.value or f"{i}." in node.value or f"/{i}" in node.value}
    return found


def test_no_column_id_outside_the_plan():
    """Code finds columns by what they run (repro.study.lookup), never by id: a renamed column cannot leave a page
    or a claim silently empty. The report and the pipeline name none; the study only in plan.py (whose roster of
    evaluated models names the columns they come from)."""
    named = {}
    for f in _files("repro/report", "repro/pipeline.py", "repro/study"):
        rel = str(f.relative_to(ROOT))
        if rel == "repro/study/plan.py":
            continue
        ids = _column_ids_in(f.read_text(encoding="utf-8"))
        if ids:
            named[rel] = ids
    assert not named, {k: sorted(v) for k, v in named.items()}


def test_the_column_id_check_can_fail():
    assert _column_ids_in('x = found["cw2_mnist"]\n') == {"cw2_mnist"}
    assert _column_ids_in('p = f"columns/{x}.ipynb"\nq = "results/quick/pgd_resnet20.json"\n') == {"pgd_resnet20"}
    assert _column_ids_in('x = "cw2"  # an attack name, not a column\n') == set()


# ------------------------------------------------------------------------------------ the report's prose in templates
# A string of this many words or more is a sentence (a table label of the report has fewer).
SENTENCE_WORDS = 8


def _sentences_in(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant or f-string of ``source`` with :data:`SENTENCE_WORDS` words or more,
    docstrings and error messages (anything inside a ``raise``) left out; an f-string's fields count as one word."""
    import ast
    import re

    tree = ast.parse(source)
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant):
            skip.add(id(body[0].value))
        if isinstance(node, ast.Raise):
            skip |= {id(sub) for sub in ast.walk(node)}
        if isinstance(node, ast.JoinedStr):
            skip |= {id(v) for v in node.values}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else " X " for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        else:
            continue
        if len(re.findall(r"[A-Za-z]{2,}", text)) >= SENTENCE_WORDS:
            out.append((node.lineno, text))
    return out


def test_the_reports_sentences_live_in_templates():
    """The report's prose is in repro/report/templates (whole sections as templates, clauses as the macros of
    phrases.md.j2); its Python builds view rows of numbers and labels. ``layout.py`` is a checker, not the book: its
    diagnostics stay."""
    found = {}
    for f in _files("repro/report"):
        if f.name != "layout.py":
            sentences = _sentences_in(f.read_text(encoding="utf-8"))
            if sentences:
                found[str(f.relative_to(ROOT))] = sentences
    assert not found, found


def test_the_sentence_check_can_fail():
    planted = 'x = f"{n} images were attacked by PGD with {k} restarts each"\n'
    assert [line for line, _ in _sentences_in(planted)] == [1]
    assert _sentences_in('y = "a short table label"\n') == []
    assert _sentences_in('raise ValueError("an error message may say as much as a user needs to fix it")\n') == []
    assert _sentences_in('def f():\n    """A docstring is a sentence of the code, not of the book."""\n') == []


# ------------------------------------------------------------------------------------------------ no import circle
def _module_imports(source: str, module: str) -> set[str]:
    """The repro modules ``source`` (the module ``module``) imports, at top level or inside a function:
    ``from . import x`` of a submodule depends on that submodule, not on its package."""
    import ast

    from repro._source import module_file

    package = module.split(".") if module_file(module) and module_file(module).name == "__init__.py" \
        else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if not target.startswith("repro"):
                continue
            subs = {f"{target}.{a.name}" for a in node.names if module_file(f"{target}.{a.name}") is not None}
            out |= subs
            if len(subs) < len(node.names):
                out.add(target)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("repro")}
    return {m for m in out if m != module and module_file(m) is not None}


def _import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _repro_graph() -> dict[str, set[str]]:
    return {module_name(f): _module_imports(f.read_text(encoding="utf-8"), module_name(f)) for f in _files("repro")}


def test_no_import_circle_in_repro():
    """The study's chapters (security, training) and the column steps import only from below: no module reaches
    itself through the modules it imports, lazily inside a function or not."""
    assert _import_circles(_repro_graph()) == []


def test_the_import_circle_check_can_fail():
    # Before: steps.resolve imported security.resolve_security, and security imported steps. Planted: the context
    # (which the security chapter imports) importing the chapter back.
    graph = _repro_graph()
    assert "repro.study.context" in graph["repro.study.security"]
    graph["repro.study.context"] = graph["repro.study.context"] | {"repro.study.security"}
    assert any({"repro.study.security", "repro.study.context"} <= set(c) for c in _import_circles(graph))
    with pytest.raises(AssertionError):
        assert _import_circles(graph) == []
    assert _module_imports("def f():\n    from .security import x\n", "repro.study.steps") == {"repro.study.security"}
    assert _module_imports("from . import runtime as rt\n", "repro.train.loop") == {"repro.train.runtime"}
