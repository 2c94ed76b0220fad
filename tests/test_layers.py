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
