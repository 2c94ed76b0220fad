"""Which code a number depends on: the ``repro`` modules a piece of code imports (transitively), a hash of their
source, and the git commit they were taken from.

Training keys (:func:`repro.train.config.config_key`) and the plan's column fingerprints
(:func:`repro.study.plan.fingerprint`) both hash the source of exactly the modules their code can execute, found by
reading the ``import`` statements (relative, absolute and function-local ones alike), so an edit to a module that
cannot change a number (the report, the pipeline) changes neither.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name


def module_file(name: str) -> Path | None:
    """The source file of the ``repro`` module ``name`` (a package's ``__init__.py``), or ``None`` if there is none
    (``from repro.attacks import pgd`` names a function of a package as often as a submodule)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def module_name(path: Path) -> str:
    """The dotted name of the module whose source is ``path`` (inside the package)."""
    parts = list(Path(path).resolve().relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, *, module: str = "") -> set[str]:
    """Every dotted ``repro`` name that ``source`` (the code of module ``module``; ``""`` for a notebook cell)
    imports, relative imports resolved, with ``from X import y`` giving both ``X`` and ``X.y``."""
    package = module.split(".") if module else []
    if module and module_file(module) is not None and module_file(module).name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def _with_parents(name: str) -> list[str]:
    """``repro.study.steps`` → the modules importing it runs: ``repro``, ``repro.study``, ``repro.study.steps``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def module_closure(roots, *, exclude: tuple[str, ...] = ()) -> tuple[Path, ...]:
    """The source files of the modules ``roots`` (dotted names) and of every ``repro`` module they import,
    transitively, in sorted order. Modules under a name in ``exclude`` (and what only they import) are left out.

    Raises:
        ValueError: a root that is not a module of the package.
    """
    def excluded(name: str) -> bool:
        return any(name == e or name.startswith(e + ".") for e in exclude)

    todo, seen = [], set()
    for root in roots:
        if module_file(root) is None:
            raise ValueError(f"{root!r} is not a module of the {PACKAGE} package")
        todo.append(root)
    while todo:
        name = todo.pop()
        for candidate in _with_parents(name):
            path = module_file(candidate)
            if path is None or path in seen or excluded(candidate):
                continue
            seen.add(path)
            todo.extend(imported_names(path.read_text(encoding="utf-8"), module=candidate))
    return tuple(sorted(seen))


def source_hash(paths) -> str:
    """sha256 over the package-relative names and the contents of ``paths`` (in the order given)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(Path(path).resolve().relative_to(PACKAGE_DIR.parent)).encode())
        digest.update(b"\0")
        digest.update(Path(path).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def _cached_closure_hash(roots: tuple[str, ...], exclude: tuple[str, ...], stamp: tuple) -> str:
    return source_hash(module_closure(roots, exclude=exclude))


def code_hash(roots, *, exclude: tuple[str, ...] = ()) -> str:
    """:func:`source_hash` of :func:`module_closure` (recomputed whenever a file of the package changes)."""
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(PACKAGE_DIR.rglob("*.py")))
    return _cached_closure_hash(tuple(roots), tuple(exclude), stamp)


# ---------------------------------------------------------------------------------------------------------- git
def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PACKAGE_DIR.parent, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info() -> dict:
    """The repository's commit (``None`` before the first commit or outside git) and whether the code is dirty.

    "Dirty" looks at the code only (``repro/``, ``notebooks/``, ``pyproject.toml``, ``constraints.txt``), not at
    results or the book, which the pipeline itself writes.
    """
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--", "repro", "notebooks", "pyproject.toml", "constraints.txt")
    return {"commit": commit, "dirty": None if status is None else bool(status)}
