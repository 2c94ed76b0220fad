"""The pipeline's guarantees without executing notebooks: a result and its notebook count as a pair only when they
come from the same run; one run per column at a time; partial files stay out of git; clear errors at the command
line; ad-hoc results never overwrite each other."""
from __future__ import annotations

import os
import subprocess

import nbformat
import pytest

from repro import pipeline, results
from repro.study import plan
from repro.study import steps as study
from repro.study.profiles import get_profile

from .conftest import needs_cifar10


def _pair(tmp_path, col, profile, *, nb_run_id: str, json_run_id: str):
    res = results.Result(column=col.id, kind="attack", notebook=col.notebook, profile=profile, parameters={},
                         metrics={"MR": 1.0}, fingerprint=plan.fingerprint(col, profile), run_id=json_run_id)
    results.save(res, results.result_path(tmp_path, profile, col.id))
    nb = nbformat.v4.new_notebook()
    nb.metadata["repro"] = {"run_id": nb_run_id}
    nbformat.write(nb, results.executed_notebook_path(tmp_path, profile, col.id))


def test_a_result_and_a_notebook_of_different_runs_are_stale(tmp_path):
    """A run killed after installing its notebook but before its JSON leaves the old JSON beside the new notebook:
    the run ids differ, so the column is rerun instead of being reported with a notebook that does not match."""
    col = plan.column("pgd_resnet20")
    _pair(tmp_path, col, "smoke", nb_run_id="a", json_run_id="a")
    assert pipeline.is_fresh(col, "smoke", tmp_path)
    _pair(tmp_path, col, "smoke", nb_run_id="b", json_run_id="a")
    assert not pipeline.is_fresh(col, "smoke", tmp_path)
    _pair(tmp_path, col, "quick", nb_run_id="a", json_run_id="a")  # a fingerprint of another profile
    results.executed_notebook_path(tmp_path, "smoke", col.id).unlink()
    assert not pipeline.is_fresh(col, "smoke", tmp_path)


def test_a_second_run_of_the_same_column_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "LOCKS", str(tmp_path / "locks"))
    with pipeline.ColumnLock("quick", "pgd_resnet20"):
        with pytest.raises(pipeline.PipelineError, match=r"column 'pgd_resnet20' \(profile quick\) is being run by "
                                                         rf"process {os.getpid()}"):
            with pipeline.ColumnLock("quick", "pgd_resnet20"):
                pass
        with pipeline.ColumnLock("quick", "cw2_mnist"):  # another column is independent
            pass
    assert not (tmp_path / "locks" / "quick-pgd_resnet20.lock").exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "LOCKS", str(tmp_path / "locks"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "smoke-cw2_mnist.lock").write_text(str(dead.pid))
    with pipeline.ColumnLock("smoke", "cw2_mnist"):
        assert (tmp_path / "locks" / "smoke-cw2_mnist.lock").read_text() == str(os.getpid())


def test_partial_executions_and_locks_are_ignored_by_git():
    root = results.repo_root()
    for path in (f"{pipeline.STAGING}/quick/pgd_resnet20.partial.ipynb", f"{pipeline.STAGING}/quick/x.json",
                 f"{pipeline.LOCKS}/quick-pgd_resnet20.lock", "runs/failed/quick-pgd_resnet20.ipynb"):
        done = subprocess.run(["git", "check-ignore", "-q", path], cwd=root)
        assert done.returncode == 0, f"{path} is not ignored by git"


def test_unknown_profile_or_column_at_the_command_line_is_a_message_not_a_traceback(capsys):
    assert pipeline.main(["--profile", "bogus"]) == 1
    err = capsys.readouterr().err
    assert "unknown profile 'bogus'" in err and "'quick'" in err and "Traceback" not in err
    assert pipeline.main(["--profile", "smoke", "--only", "nope"]) == 1
    assert "unknown column(s) nope" in capsys.readouterr().err


def _ctx(column: str, **changes) -> study.Context:
    col = plan.column("pgd_resnet20")
    params = {**col.parameters_for("quick"), "column": column, "results_dir": "runs", "device": "cpu",
              "logit_shift": True, **changes}
    p = study.resolve(attack="pgd", **params)
    return study.Context(kind="attack", name="pgd", params=p, profile=get_profile("quick"), device="cpu",
                         started=0.0)


def test_ad_hoc_results_get_distinct_names_and_plan_columns_keep_theirs():
    from repro.results import PIPELINE_STAGING

    assert study.result_name(_ctx("pgd_resnet20", results_dir=PIPELINE_STAGING)) == "pgd_resnet20"
    # outside the pipeline, a plan column's name gets the parameters' hash too: two ad-hoc runs never collide
    c, d = study.result_name(_ctx("pgd_resnet20", eps=0.05)), study.result_name(_ctx("pgd_resnet20", eps=0.2))
    assert c.startswith("pgd_resnet20-") and d.startswith("pgd_resnet20-") and c != d
    a, b = study.result_name(_ctx("pgd_adhoc")), study.result_name(_ctx("pgd_adhoc", eps=8.0, step_size=0.875))
    assert a.startswith("pgd_adhoc-") and b.startswith("pgd_adhoc-") and a != b
    assert study.result_name(_ctx("pgd_adhoc")) == a  # the same parameters: the same file


@needs_cifar10
def test_a_model_that_must_be_trained_is_announced_with_an_estimate(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    ctx = _ctx("pgd_adhoc", model="resnet20_wide", width=1, epochs=1, train_subset=100)
    text = study.planned_work(ctx)
    assert "raw model: training resnet20_wide" in text and "not in the training cache: about" in text
    assert "attack: pgd on up to 1,000 candidates" in text


def test_progress_bars_are_on_for_users_and_off_under_ci_and_in_committed_executions(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("REPRO_PROGRESS", raising=False)
    assert study.progress_enabled()
    monkeypatch.setenv("CI", "true")
    assert not study.progress_enabled()
    monkeypatch.delenv("CI")
    monkeypatch.setenv("REPRO_PROGRESS", "0")  # what the pipeline sets for the executions it commits
    assert not study.progress_enabled()


def test_an_edited_result_is_stale_and_the_book_refuses_it_by_name(tmp_path, capsys):
    """MR edited from 1.0 to 0.5 in a committed result used to render as `50.00 [99.60, 100.00]` ✓: now the
    column counts as stale (the pipeline reruns it) and --build-book stops naming the file and the field."""
    import json
    import shutil

    src = results.repo_root() / "results" / "smoke"
    shutil.copytree(src, tmp_path / "smoke", ignore=shutil.ignore_patterns("models"))
    path = tmp_path / "smoke" / "pgd_resnet20.json"
    col = plan.column("pgd_resnet20")
    fresh_before = pipeline.is_fresh(col, "smoke", tmp_path)
    data = json.loads(path.read_text())
    data["metrics"]["MR"] = 0.5 * data["intervals"]["MR"]["low"]
    path.write_text(json.dumps(data))
    assert not pipeline.is_fresh(col, "smoke", tmp_path)
    assert fresh_before == pipeline.is_fresh(col, "smoke", src.parent)  # the edit is what made it stale
    code = pipeline.main(["--build-book", "--profile", "smoke", "--results-dir", str(tmp_path),
                          "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and f"{path}: metrics.MR = " in err and "inside its own 95 % interval" in err
    assert not (tmp_path / "out" / "_build" / "html").exists()


@pytest.mark.parametrize("fault, message", [
    ("missing", "no executed notebook {nb} beside its result {res}"),
    ("other_run", "{nb} is the execution of another run than {res}"),
])
def test_the_book_refuses_a_result_without_its_own_executed_notebook(tmp_path, capsys, fault, message):
    """Before: a missing notebook was reported as "no result", and another run's (or another column's) executed
    notebook was rendered under this column's title."""
    import shutil

    shutil.copytree(results.repo_root() / "results" / "smoke", tmp_path / "smoke",
                    ignore=shutil.ignore_patterns("models"))
    res = results.result_path(tmp_path, "smoke", "pgd_resnet20")
    nb = results.executed_notebook_path(tmp_path, "smoke", "pgd_resnet20")
    if fault == "missing":
        nb.unlink()
    else:
        shutil.copy2(results.executed_notebook_path(tmp_path, "smoke", "cw2_mnist"), nb)
    code = pipeline.main(["--build-book", "--profile", "smoke", "--results-dir", str(tmp_path),
                          "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and message.format(nb=nb, res=res) in err, err
    assert not (tmp_path / "out" / "_build" / "html").exists()


def test_pruning_keeps_a_model_carried_from_a_key_a_result_still_names(tmp_path, monkeypatch):
    """After python -m repro.train.carry, the results still name the old keys until they are recomputed: the first
    column a pipeline finished used to delete every carried model (the next columns then retrained them)."""
    from repro import _io
    from repro.train.cache import published_path, read_index

    folder = results.models_dir(tmp_path, "quick")
    folder.mkdir(parents=True)

    def model(key: str, carried_from: str | None) -> None:
        staged = tmp_path / "staged.pt"
        _io.save_atomic({"key": key, "carried": [{"from_key": carried_from}] if carried_from else []}, staged)
        staged.replace(published_path(folder, key, _io.sha256_file(staged)))

    old, carried, unrelated, named = "a" * 64, "b" * 64, "c" * 64, "d" * 64
    model(carried, old)
    model(unrelated, "e" * 64)  # carried from a key no result names
    model(named, None)
    monkeypatch.setattr(results, "load_profile", lambda results_dir, profile: {"col": object()})
    monkeypatch.setattr(pipeline, "trained_models", lambda result: {old: "x", named: "y"})
    pipeline.prune_models("quick", tmp_path, log=lambda *a: None)
    assert set(read_index(folder)) == {carried, named}
