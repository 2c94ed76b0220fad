"""The pipeline: execute the plan's notebooks with papermill, then build the book from the results.

    python -m repro.pipeline --profile quick             # run every stale column of the plan (results/quick/)
    python -m repro.pipeline --profile quick --only pgd_resnet20 --force
    python -m repro.pipeline --build-book --profile quick  # generate the pages from results/quick/, build _build/html
    python -m repro.pipeline --screenshot --profile quick  # every page as PNG, then the layout check (Chromium)

A column is up to date when its result carries the plan's fingerprint (:func:`repro.study.plan.fingerprint`: the
plan row, the profile, the notebook, the source files the notebook's ``repro`` imports reach, excluding the report
and this module, which never change a number, and the published CSVs), its executed notebook carries the same
``run_id``, and every model it trained is published in ``results/<profile>/models/`` with the sha256 the result
records (so a fresh clone reruns a column without retraining). A notebook runs in ``runs/pipeline/`` (ignored by
git); the result it writes there is moved, never rewritten, beside its executed notebook in ``results/<profile>/``
(notebook first, then the JSON: a run killed between the two leaves a pair whose run ids differ, which counts as
stale). A second run of the same column while one is in progress is refused. papermill executes; jupyter-book only
renders (``execute_notebooks: 'off'``) with warnings as errors.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import _io
from . import results as results_mod
from ._io import write_text_atomic
from .study.plan import Column, columns_for, fingerprint
from .train.cache import published_path, read_index

NOTEBOOKS = "notebooks"
STAGING = results_mod.PIPELINE_STAGING  # where notebooks write their results while the pipeline runs them
LOCKS = "runs/locks"
SCREENSHOT_DIR = "screenshots"


class PipelineError(RuntimeError):
    """A notebook failed, results are missing, another run holds the column, or the book did not build."""


def notebook_run_id(path: Path) -> str | None:
    """The ``run_id`` the pipeline stored in an executed notebook's metadata (``None`` if absent)."""
    import nbformat

    try:
        return nbformat.read(path, as_version=4).metadata.get("repro", {}).get("run_id")
    except (OSError, ValueError):
        return None


def is_fresh(col: Column, profile: str, results_dir: str | os.PathLike) -> bool:
    """Whether ``col`` has an up-to-date result and the executed notebook of the same run under ``results_dir``,
    with every model it trained published beside it (the sha256 the result records)."""
    path = results_mod.result_path(results_dir, profile, col.id)
    nb = results_mod.executed_notebook_path(results_dir, profile, col.id)
    if not path.exists() or not nb.exists():
        return False
    try:
        result = results_mod.load(path)
    except (ValueError, TypeError, KeyError):
        return False
    if result.fingerprint != fingerprint(col, profile) or notebook_run_id(nb) != result.run_id:
        return False
    folder = results_mod.models_dir(results_dir, profile)
    return all(published_path(folder, key, sha).is_file() for key, sha in trained_models(result).items())


def check_pairs(profile: str, results_dir: str | os.PathLike) -> None:
    """Refuse to render a column whose result has no executed notebook of its own run beside it.

    Raises:
        PipelineError: naming the result and the notebook that is missing or belongs to another run.
    """
    for col in columns_for(profile):
        path = results_mod.result_path(results_dir, profile, col.id)
        nb = results_mod.executed_notebook_path(results_dir, profile, col.id)
        if not path.exists():
            continue
        if not nb.exists():
            raise PipelineError(f"no executed notebook {nb} beside its result {path}; rerun the column "
                                f"(python -m repro.pipeline --profile {profile} --only {col.id} --force)")
        run_id = results_mod.load(path).run_id
        if notebook_run_id(nb) != run_id:
            raise PipelineError(f"{nb} is the execution of another run than {path} (run ids "
                                f"{notebook_run_id(nb)!r} and {run_id!r}); rerun the column "
                                f"(python -m repro.pipeline --profile {profile} --only {col.id} --force)")


def trained_models(result: results_mod.Result) -> dict[str, str]:
    """Key → sha256 of every model trained here that ``result`` used (DeepSec's checkpoints are not published)."""
    return {rec["key"]: rec["sha256"] for rec in result.provenance.get("models", {}).values()
            if isinstance(rec, dict) and rec.get("key") and rec.get("sha256")}


def publish_models(result: results_mod.Result, profile: str, results_dir: str | os.PathLike, log=print) -> None:
    """Publish every model ``result`` trained into ``<results_dir>/<profile>/models/`` (from the training cache, or
    from the committed models folder it was loaded from), each checked against the sha256 the result records."""
    from ._io import sha256_file
    from .train import cached_model_file, publish

    folder = results_mod.models_dir(results_dir, profile)
    committed = results_mod.models_dir(results_mod.COMMITTED_RESULTS, profile)
    for key, sha in trained_models(result).items():
        if published_path(folder, key, sha).is_file():
            continue
        sources = [p for p in (cached_model_file(key), published_path(committed, key, sha)) if p.is_file()]
        source = next((p for p in sources if sha256_file(p) == sha), None)
        if source is None:
            raise PipelineError(f"column {result.column!r} used model {key} (sha256 {sha}), but neither the training "
                                f"cache nor {committed} holds a file with that sha256; rerun the column")
        dest = publish(source, folder)
        log(f"[{profile}] {result.column}: published model {key[:12]} ({dest.stat().st_size:,} bytes)")


def prune_models(profile: str, results_dir: str | os.PathLike, log=print) -> None:
    """Delete the published models of ``<results_dir>/<profile>/models/`` that no result there names, directly or
    through a carry: a model carried to today's training code (:mod:`repro.train.carry`) keeps the key a result
    still names in its ``carried`` records until that result is recomputed, and is kept. (Before: the first column
    a pipeline finished after a carry deleted every carried model, and the next columns retrained them.)"""
    from .train import prune

    keep = set()
    for result in results_mod.load_profile(results_dir, profile).values():
        keep |= set(trained_models(result))
    folder = results_mod.models_dir(results_dir, profile)
    for key, path in read_index(folder).items():
        if key not in keep and any(rec.get("from_key") in keep for rec in _io.load(path).get("carried", [])):
            keep.add(key)
    for path in prune(folder, keep=keep):
        log(f"[{profile}] deleted the superseded published model {path.name}")


class ColumnLock:
    """An exclusive lock file per (profile, column) under ``runs/locks/``; a lock whose process is gone is taken
    over, a live one refused with a message naming its process."""

    def __init__(self, profile: str, column: str):
        self.path = results_mod.resolve_path(LOCKS) / f"{profile}-{column}.lock"
        self.what = f"column {column!r} (profile {profile})"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pid = self._holder()
                if pid is not None and _alive(pid):
                    raise PipelineError(f"{self.what} is being run by process {pid} (lock {self.path}); wait for it "
                                        "to finish, or delete the lock file if that process is not a pipeline")
                self.path.unlink(missing_ok=True)  # left by a run that was killed
                continue
            with os.fdopen(fd, "w") as out:
                out.write(str(os.getpid()))
            return self
        raise PipelineError(f"could not take the lock {self.path} for {self.what}")

    def _holder(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def execute(col: Column, profile: str, *, results_dir: str, device: str = "auto", overrides: dict | None = None,
            log=print) -> float:
    """Execute ``col``'s notebook under ``profile`` with papermill and install the executed notebook and its result
    as a pair under ``results_dir/<profile>/``; returns the wall time (s).

    ``overrides`` replace notebook parameters (the paper-profile dry run uses them to cut budgets); the pipeline
    itself never passes any. Raises :class:`PipelineError` (with the failing cell's error) when the notebook fails,
    keeping the partial execution under ``runs/failed/``, or when another run holds the column.
    """
    import nbformat
    import papermill

    root = results_mod.repo_root()
    # The attack and defence notebooks serve every attack and defence: the column's registry entry is one of their
    # parameters.
    params = {**col.parameters_for(profile), **({"attack": col.attack} if col.attack else {}),
              **({"defence": col.defence} if col.defence else {}), "column": col.id,
              "results_dir": STAGING, "device": device, **(overrides or {})}
    staging = results_mod.resolve_path(STAGING) / profile
    partial = staging / f"{col.id}.partial.ipynb"
    staged = results_mod.result_path(STAGING, profile, col.id)
    with ColumnLock(profile, col.id):
        staging.mkdir(parents=True, exist_ok=True)
        staged.unlink(missing_ok=True)
        started = time.time()
        log(f"[{profile}] {col.id}: executing {NOTEBOOKS}/{col.notebook}")
        # Progress bars would be stored in the committed executions; the pipeline logs per column instead.
        previous = os.environ.get("REPRO_PROGRESS")
        os.environ["REPRO_PROGRESS"] = "0"
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
        finally:
            if previous is None:
                os.environ.pop("REPRO_PROGRESS", None)
            else:
                os.environ["REPRO_PROGRESS"] = previous
        if not staged.exists():
            raise PipelineError(f"notebook {col.notebook} ran for column {col.id!r} but saved no result at {staged}")
        result = results_mod.load(staged)
        publish_models(result, profile, results_dir, log=log)  # models first: a result never names a missing one
        nb = nbformat.read(partial, as_version=4)
        meta = nb.metadata.setdefault("papermill", {})
        meta["input_path"] = f"{NOTEBOOKS}/{col.notebook}"  # no local paths in committed files
        meta["output_path"] = f"{Path(results_dir).name}/{profile}/{col.id}.ipynb"
        nb.metadata["repro"] = {"run_id": result.run_id, "column": col.id, "profile": profile}
        dest_nb = results_mod.executed_notebook_path(results_dir, profile, col.id)
        dest_nb.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(nbformat.writes(nb), dest_nb)
        os.replace(staged, results_mod.result_path(results_dir, profile, col.id))
        partial.unlink(missing_ok=True)
        prune_models(profile, results_dir, log=log)
    seconds = time.time() - started
    log(f"[{profile}] {col.id}: done in {seconds:.1f} s")
    return seconds


def run_plan(profile: str, *, results_dir: str = "results", only=None, force: bool = False, device: str = "auto",
             log=print) -> dict[str, float | None]:
    """Run every stale column of the plan under ``profile``; returns column id → seconds (``None``: skipped).

    Raises:
        PipelineError: an unknown column, a failing notebook, or a result without the plan's fingerprint.
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
        timings[col.id] = execute(col, profile, results_dir=results_dir, device=device, log=log)
        if not is_fresh(col, profile, results_dir):
            raise PipelineError(f"column {col.id!r} ran but its result does not carry the plan's fingerprint; the "
                                "notebook's parameters differ from the plan row")
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
    from .report import pages

    root = results_mod.repo_root()
    out = results_mod.resolve_path(output) if output is not None else root
    stage = out / "_build" / "source"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, stage / name)
    shutil.copytree(root / "book", stage / "book", ignore=shutil.ignore_patterns("generated", ".*"))
    check_pairs(profile, results_dir)
    missing = pages.generate(profile, results_dir=results_dir, stage=stage)
    if missing:
        raise PipelineError(f"no result for column(s) {', '.join(missing)} under {results_dir}/{profile}/; run "
                            f"`python -m repro.pipeline --profile {profile}` first")
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


def update_readme(profile: str, *, results_dir: str = "results", log=print) -> Path:
    """Rewrite the "results at a glance" block of README.md from ``results_dir/<profile>/`` (atomically)."""
    from .report import pages

    path = results_mod.repo_root() / "README.md"
    text = pages.readme_with_glance(path.read_text(encoding="utf-8"), profile, pages.load_found(profile, results_dir))
    write_text_atomic(text, path)
    log(f"README.md: results at a glance regenerated from {results_dir}/{profile}/")
    return path


# ------------------------------------------------------------------------------------------------- screenshots
def screenshot(*, html: str | os.PathLike | None = None, out_dir: str = SCREENSHOT_DIR, log=print) -> list[Path]:
    """Render every page of the built book at :data:`repro.report.layout.WIDTH` px with headless Chromium into
    ``screenshots/<page>.png`` (``intro.png``, ``generated-table1.png``, ...), then run the layout check on them
    (:mod:`repro.report.layout`); raises :class:`PipelineError` naming each table or figure that does not fit."""
    import tempfile

    from .report import layout

    html = Path(html) if html is not None else results_mod.repo_root() / "_build" / "html"
    if not (html / "book" / "intro.html").exists():
        raise PipelineError(f"{html / 'book' / 'intro.html'} does not exist; build the book first (make book)")
    try:
        chromium = layout.chromium()
    except layout.LayoutError as err:
        raise PipelineError(str(err)) from err
    dest = results_mod.resolve_path(out_dir)
    dest.mkdir(parents=True, exist_ok=True)
    shots = []
    for target in layout.book_pages(html):
        png = dest / (target.relative_to(html / "book").with_suffix("").as_posix().replace("/", "-") + ".png")
        with tempfile.TemporaryDirectory() as profile_dir:
            cmd = [chromium, *layout.FLAGS, f"--user-data-dir={profile_dir}", f"--window-size={layout.WIDTH},2000",
                   f"--screenshot={png}", target.as_uri()]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            except subprocess.TimeoutExpired as err:
                raise PipelineError(f"Chromium did not render {target} within {err.timeout:g} s") from err
        if proc.returncode != 0 or not png.exists():
            raise PipelineError(f"Chromium failed for {target}:\n{proc.stderr[-3000:]}")
        shots.append(png)
    log(f"screenshots: {len(shots)} pages in {dest}")
    try:
        problems = [p for page in layout.measure(html) for p in page.problems]
    except (layout.LayoutError, subprocess.TimeoutExpired) as err:
        raise PipelineError(f"the layout check could not lay the book out: {err}") from err
    if problems:
        raise PipelineError("the book does not fit a {} px window:\n{}".format(layout.WIDTH, "\n".join(problems)))
    log(f"layout: every table and figure of the {len(shots)} pages fits {layout.WIDTH} px")
    return shots


# --------------------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repro.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=os.environ.get("PROFILE", "quick"),
                        help="compute profile: smoke, quick or paper (default: $PROFILE or quick)")
    parser.add_argument("--results-dir", default="results", help="results folder (default: results/)")
    parser.add_argument("--only", nargs="+", metavar="COLUMN", help="run only these columns")
    parser.add_argument("--force", action="store_true", help="re-execute columns even when up to date")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    parser.add_argument("--output", default=None, help="folder that receives _build/ (default: the repository)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--build-book", action="store_true", help="build the HTML book from the results")
    action.add_argument("--screenshot", action="store_true", help="PNG screenshots of the built book")
    action.add_argument("--update-readme", action="store_true",
                        help="regenerate README.md's 'results at a glance' block from the results")
    args = parser.parse_args(argv)
    try:
        if args.build_book:
            build_book(args.profile, results_dir=args.results_dir, output=args.output)
        elif args.update_readme:
            update_readme(args.profile, results_dir=args.results_dir)
        elif args.screenshot:
            html = None if args.output is None else Path(args.output) / "_build" / "html"
            screenshot(html=html)
        else:
            if args.device != "auto":  # before any notebook starts, not as a kernel traceback minutes later
                from .metrics.checks import check_device

                check_device(args.device)
            timings = run_plan(args.profile, results_dir=args.results_dir, only=args.only, force=args.force,
                               device=args.device)
            ran = {k: v for k, v in timings.items() if v is not None}
            print(f"[{args.profile}] {len(ran)} column(s) executed, {len(timings) - len(ran)} up to date; "
                  f"{sum(ran.values()):.0f} s")
    except (PipelineError, ValueError) as err:  # unknown profile or column, failed run: a message, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
