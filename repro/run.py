"""The pipeline: execute the plan's notebooks with papermill, build the book, refresh the regression notebooks.

    python -m repro.run --profile quick             # run every stale column of the plan (results/quick/)
    python -m repro.run --profile quick --only pgd_resnet20 --force
    python -m repro.run --build-book --profile quick  # generate the tables from results/quick/ and build _build/html
    python -m repro.run --refresh-regression        # re-execute every notebook at smoke into tests/regression/
    python -m repro.run --screenshot --profile quick  # landing page and tables as PNG (headless Chromium)

A column is skipped when its result exists with the same fingerprint (hash of its notebook parameters and of the
source files its numbers depend on, see :mod:`repro.plan`) and its executed notebook is there. A failing notebook
stops the pipeline with a non-zero exit status (the failed execution is kept under ``runs/failed/``); papermill
executes, jupyter-book only renders (``execute_notebooks: 'off'``) with warnings as errors.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import results as results_mod
from .plan import Column, columns_for

NOTEBOOKS = "notebooks"
REGRESSION_DIR = "tests/regression"
REGRESSION_RESULTS = "runs/regression"
SCREENSHOT_DIR = "screenshots"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


class PipelineError(RuntimeError):
    """A notebook failed, results are missing, or the book did not build."""


def column_fingerprint(col: Column, profile: str) -> str:
    """The fingerprint a fresh result of ``col`` under ``profile`` carries (see :func:`repro.results.fingerprint`)."""
    return results_mod.fingerprint(col.parameters_for(profile),
                                   tuple(col.sources) + (f"{NOTEBOOKS}/{col.notebook}",))


def executed_notebook(results_dir: str | os.PathLike, profile: str, column_id: str) -> Path:
    """Where the executed notebook of a column lives: beside its result JSON."""
    return results_mod.resolve_path(results_dir) / profile / f"{column_id}.ipynb"


def is_fresh(col: Column, profile: str, results_dir: str | os.PathLike) -> bool:
    """Whether ``col`` has an up-to-date result and executed notebook under ``results_dir``."""
    path = results_mod.result_path(results_dir, profile, col.id)
    if not path.exists() or not executed_notebook(results_dir, profile, col.id).exists():
        return False
    try:
        return results_mod.load(path).fingerprint == column_fingerprint(col, profile)
    except (ValueError, TypeError, KeyError):
        return False


def execute(col: Column, profile: str, *, results_dir: str, output: Path, device: str = "auto",
            overrides: dict | None = None, log=print) -> float:
    """Execute ``col``'s notebook under ``profile`` with papermill into ``output``; returns the wall time (s).

    The notebook saves its result under ``results_dir``. ``overrides`` replace notebook parameters (the
    paper-profile dry run uses them to cut budgets); the pipeline itself never passes any. Raises
    :class:`PipelineError` (with the failing cell's error) when the notebook fails; the partial execution is kept
    under ``runs/failed/``.
    """
    import papermill

    root = results_mod.repo_root()
    params = {**col.parameters_for(profile), "column": col.id, "results_dir": results_dir, "device": device,
              **(overrides or {})}
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.stem}.partial.ipynb")
    started = time.time()
    log(f"[{profile}] {col.id}: executing {NOTEBOOKS}/{col.notebook}")
    try:
        papermill.execute_notebook(str(root / NOTEBOOKS / col.notebook), str(partial), parameters=params,
                                   cwd=str(root), kernel_name="python3", progress_bar=False, log_output=False)
    except Exception as err:  # papermill raises PapermillExecutionError and kernel errors; we re-raise one type
        failed = root / "runs" / "failed" / f"{profile}-{col.id}.ipynb"
        failed.parent.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            os.replace(partial, failed)
        raise PipelineError(f"notebook {col.notebook} failed for column {col.id!r} (profile {profile}); the "
                            f"partial execution is in {failed}:\n{err}") from err
    _relative_papermill_paths(partial, col, output)
    os.replace(partial, output)
    seconds = time.time() - started
    log(f"[{profile}] {col.id}: done in {seconds:.1f} s")
    return seconds


def _relative_papermill_paths(path: Path, col: Column, output: Path) -> None:
    """Record the notebook's input and output paths relative to the repository (no local paths in committed files)."""
    import nbformat

    root = results_mod.repo_root()
    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.get("papermill", {})
    meta["input_path"] = f"{NOTEBOOKS}/{col.notebook}"
    try:
        meta["output_path"] = str(output.resolve().relative_to(root))
    except ValueError:
        meta["output_path"] = output.name
    nbformat.write(nb, path)


def run_plan(profile: str, *, results_dir: str = "results", only=None, force: bool = False, device: str = "auto",
             log=print) -> dict[str, float | None]:
    """Run every stale column of the plan under ``profile``; returns column id → seconds (``None``: skipped).

    After a successful execution the column's result is stamped with its fingerprint and the pipeline's wall time.
    """
    cols = columns_for(profile)
    if only:
        unknown = sorted(set(only) - {c.id for c in cols})
        if unknown:
            raise PipelineError(f"unknown column(s) {', '.join(unknown)} for profile {profile}; allowed: "
                                f"{', '.join(c.id for c in cols)}")
        cols = [c for c in cols if c.id in only]
    timings: dict[str, float | None] = {}
    for col in cols:
        if not force and is_fresh(col, profile, results_dir):
            log(f"[{profile}] {col.id}: up to date, skipped")
            timings[col.id] = None
            continue
        seconds = execute(col, profile, results_dir=results_dir,
                          output=executed_notebook(results_dir, profile, col.id), device=device, log=log)
        path = results_mod.result_path(results_dir, profile, col.id)
        if not path.exists():
            raise PipelineError(f"notebook {col.notebook} ran for column {col.id!r} but saved no result at {path}")
        result = results_mod.load(path)
        result.fingerprint = column_fingerprint(col, profile)
        result.provenance["pipeline_wall_time_s"] = seconds
        results_mod.save(result, path)
        timings[col.id] = seconds
    return timings


# --------------------------------------------------------------------------------------------------------- book
def build_book(profile: str, *, results_dir: str = "results", output: str | os.PathLike | None = None,
               log=print) -> Path:
    """Generate the book's pages from ``results_dir/<profile>/`` and build the HTML with jupyter-book.

    The book's sources (``_config.yml``, ``_toc.yml``, ``book/``) are staged with the generated pages into
    ``<output>/_build/source`` (the working tree is never modified) and built into ``<output>/_build/html`` with
    warnings as errors. Returns the HTML folder.

    Raises:
        PipelineError: a column of the plan has no result, or jupyter-book fails (its output is in the message).
    """
    from . import book

    root = results_mod.repo_root()
    out = results_mod.resolve_path(output) if output is not None else root
    stage = out / "_build" / "source"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, stage / name)
    shutil.copytree(root / "book", stage / "book", ignore=shutil.ignore_patterns("generated", ".*"))
    missing = book.generate(profile, results_dir=results_dir, stage=stage)
    if missing:
        raise PipelineError(f"no result for column(s) {', '.join(missing)} under {results_dir}/{profile}/; run "
                            f"`python -m repro.run --profile {profile}` first")
    html = out / "_build" / "html"
    if html.exists():
        shutil.rmtree(html)
    # The jupyter-book console script of this interpreter's environment (jupyter_book has no __main__).
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(stage), "--path-output", str(out), "-W", "-n",
           "--keep-going"]
    log(f"building the book: {' '.join(cmd)}")
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"jupyter-book failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}\n"
                            f"{proc.stderr[-6000:]}")
    log(f"book built: {html / 'index.html'}")
    return html


# ------------------------------------------------------------------------------------------------- regression
def refresh_regression(*, results_dir: str = "results", device: str = "cpu", log=print) -> None:
    """Re-execute every notebook of the smoke plan and copy the executions to ``tests/regression/`` for nbval.

    The smoke results in ``results/smoke/`` and the regression notebooks are the same executions. In the copies the
    injected ``results_dir`` points at ``runs/regression/`` (ignored by git), so that nbval's re-execution never
    touches ``results/``.
    """
    import nbformat

    root = results_mod.repo_root()
    run_plan("smoke", results_dir=results_dir, force=True, device=device, log=log)
    dest = root / REGRESSION_DIR
    dest.mkdir(parents=True, exist_ok=True)
    for col in columns_for("smoke"):
        nb = nbformat.read(executed_notebook(results_dir, "smoke", col.id), as_version=4)
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        if len(injected) != 1:
            raise PipelineError(f"{col.id}: expected one papermill injected-parameters cell, found {len(injected)}")
        lines = [f'results_dir = "{REGRESSION_RESULTS}"' if line.startswith("results_dir = ") else line
                 for line in injected[0].source.splitlines()]
        injected[0].source = "\n".join(lines)
        nbformat.write(nb, dest / f"{col.id}.ipynb")
        log(f"regression notebook: {REGRESSION_DIR}/{col.id}.ipynb")


# ------------------------------------------------------------------------------------------------- screenshots
def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise PipelineError("no Chromium found; install it (Debian: apt-get install -y chromium)")


def screenshot(*, html: str | os.PathLike | None = None, out_dir: str = SCREENSHOT_DIR, log=print) -> list[Path]:
    """Render the landing page and the two tables pages with headless Chromium into ``screenshots/*.png``."""
    import tempfile

    root = results_mod.repo_root()
    html = Path(html) if html is not None else root / "_build" / "html"
    pages = {"landing": "book/intro.html", "table1": "book/generated/table1.html",
             "table2": "book/generated/table2.html", "findings": "book/findings.html"}
    dest = results_mod.resolve_path(out_dir)
    dest.mkdir(parents=True, exist_ok=True)
    chromium = _chromium()
    shots = []
    for name, page in pages.items():
        target = html / page
        if not target.exists():
            raise PipelineError(f"{target} does not exist; build the book first (make book)")
        png = dest / f"{name}.png"
        with tempfile.TemporaryDirectory() as profile_dir:
            cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "--window-size=1400,2000",
                   f"--screenshot={png}", target.as_uri()]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0 or not png.exists():
            raise PipelineError(f"Chromium failed for {page}:\n{proc.stderr[-3000:]}")
        log(f"screenshot: {png}")
        shots.append(png)
    return shots


# --------------------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repro.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=os.environ.get("PROFILE", "quick"),
                        help="compute profile: smoke, quick or paper (default: $PROFILE or quick)")
    parser.add_argument("--results-dir", default="results", help="results folder (default: results/)")
    parser.add_argument("--only", nargs="+", metavar="COLUMN", help="run only these columns")
    parser.add_argument("--force", action="store_true", help="re-execute columns even when up to date")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    parser.add_argument("--output", default=None, help="folder that receives _build/ (default: the repository)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--build-book", action="store_true", help="build the HTML book from the results")
    action.add_argument("--refresh-regression", action="store_true",
                        help="re-execute every notebook at smoke into tests/regression/")
    action.add_argument("--screenshot", action="store_true", help="PNG screenshots of the built book")
    args = parser.parse_args(argv)
    try:
        if args.build_book:
            build_book(args.profile, results_dir=args.results_dir, output=args.output)
        elif args.refresh_regression:
            refresh_regression(device="cpu")
        elif args.screenshot:
            html = None if args.output is None else Path(args.output) / "_build" / "html"
            screenshot(html=html)
        else:
            timings = run_plan(args.profile, results_dir=args.results_dir, only=args.only, force=args.force,
                               device=args.device)
            ran = {k: v for k, v in timings.items() if v is not None}
            print(f"[{args.profile}] {len(ran)} column(s) executed, {len(timings) - len(ran)} up to date; "
                  f"{sum(ran.values()):.0f} s")
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
