"""The book: comparison logic on hand-made results, and the smoke book built end to end with jupyter-book."""
from __future__ import annotations

import json

import re
import shutil
from html.parser import HTMLParser

import pytest

from repro import results
from repro.pipeline import build_book, run_plan
from repro.report import pages as book
from repro.study import claims, plan, verdicts
from repro.study.verdicts import Verdict, verdict

from .conftest import needs_deepsec

NUMBER = re.compile(r"^[+−-]?\d+(\.\d+)?( \[[+−-]?\d+(\.\d+)?, [+−-]?\d+(\.\d+)?\])?$")


def _result(column: str, metrics: dict, intervals: dict | None = None, profile: str = "paper") -> results.Result:
    return results.Result(column=column, kind="attack", notebook="pgd.ipynb", profile=profile, parameters={},
                          metrics=metrics, intervals=intervals or {})


def test_comparison_judges_the_published_value_against_our_interval():
    col = plan.column("pgd_resnet20")
    res = _result(col.id, {"MR": 0.99, "ALD_Linf": 0.2, "ASS": 0.5},
                  {"MR": {"low": 0.98, "high": 0.997, "n": 911}, "ALD_Linf": {"low": 0.19, "high": 0.21, "n": 900}})
    rows = {r["metric"]: r for r in book.comparison_rows(col, res)}
    # 100 % lies within [98.0, 99.7] widened by 0.5 pp: consistent; the paper's 0.100 is far from [0.19, 0.21].
    assert rows["MR"]["followup"] == pytest.approx(1.0) and rows["MR"]["verdict_followup"] == Verdict.CONSISTENT
    assert rows["MR"]["d_followup"] == pytest.approx(-0.01) and rows["MR"]["n"] == 911
    assert rows["ALD_Linf"]["verdict_followup"] == Verdict.INCONSISTENT
    assert rows["ASS"]["verdict_followup"] is None  # a value without an interval is not judged
    assert rows["PSD"]["ours"] is None and rows["PSD"]["verdict_followup"] is None
    assert rows["RIC"]["followup"] is None  # not in the published table
    assert rows["ACTC"]["second_hand_deepsec"] and not rows["ACTC"]["second_hand_followup"]


def test_every_verdict_shown_is_the_rules_output():
    """No verdict is typed: each one the report shows equals the rule applied to the interval and the published
    value, and the published tables hold numbers only."""
    col = plan.column("nat_mnist")
    res = _result(col.id, {"ACC_raw": 0.9935, "CAV": 0.05}, {"ACC_raw": {"low": 0.991, "high": 0.9955, "n": 10000},
                                                           "CAV": {"low": 0.04, "high": 0.06, "n": 10000}})
    for r in book.comparison_rows(col, res, "paper"):
        for key, source in (("followup", "follow-up"), ("deepsec", "deepsec")):
            pub = plan.published_value("2", "nat_mnist", source, r["metric"])
            expected = verdict(low=r["low"], high=r["high"], published=None if pub is None else pub.value,
                               metric=r["metric"], reason=r["reason"])
            assert r[f"verdict_{key}"] == expected
    for table in ("1", "2"):
        header = (results.repo_root() / "repro" / "study" / "published" / f"table{table}.csv").read_text().split(
            "\n")[0]
        assert not any(word in header for word in ("verdict", "ok", "consistent", "within"))
    assert book._fmt("CAV", -0.0009) == "-0.09"


def test_gpu_estimate_comes_from_the_device_check_output(tmp_path, monkeypatch):
    """The appendix's estimate is built from benchmarks/results/gpu_<device>.json (CUDA preferred), never from
    hand-set constants; without a file it says how to make one."""
    monkeypatch.setattr(book.results_mod, "repo_root", lambda: tmp_path)
    assert "No device check has been run" in book.gpu_estimate({})
    folder = tmp_path / "benchmarks" / "results"
    folder.mkdir(parents=True)
    check = {"device": "a test CPU", "device_type": "cpu", "torch": "x", "profile": "paper",
             "throughput": {"resnet20": {"pgd_step": 100.0}},
             "estimate": [{"column": "pat_resnet20", "seconds": 7200.0}, {"column": "pat_resnet20", "seconds": 3600.0}],
             "total_seconds": 10800.0}
    (folder / "gpu_cpu.json").write_text(json.dumps(check), encoding="utf-8")
    text = book.gpu_estimate({})
    assert "a test CPU" in text and "No GPU was available" in text and "| `pat_resnet20` | 3.0 |" in text
    assert "**total** | **3.0**" in text and "| `resnet20` | 100 |" in text
    (folder / "gpu_cuda.json").write_text(json.dumps({**check, "device": "a test GPU", "device_type": "cuda"}),
                                          encoding="utf-8")
    text = book.gpu_estimate({})
    assert "a test GPU" in text and "No GPU was available" not in text


class _Tables(HTMLParser):
    """Collects every <table> of a page as rows of cell texts."""

    def __init__(self):
        super().__init__()
        self.tables, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join(self._cell.split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


@pytest.mark.slow
@needs_deepsec
def test_smoke_book_builds_with_both_tables(tmp_path):
    """Build the smoke book from the committed smoke results (re-running only stale columns) into a temporary
    folder, and check that each table's overview shows a number in every cell we computed."""
    results_dir = tmp_path / "results"
    committed = results.repo_root() / "results" / "smoke"
    if committed.exists():
        shutil.copytree(committed, results_dir / "smoke")
    run_plan("smoke", results_dir=str(results_dir), device="cpu", log=lambda *a: None)
    html = build_book("smoke", results_dir=str(results_dir), output=tmp_path, log=lambda *a: None)
    assert (html / "index.html").exists()
    found = results.load_profile(results_dir, "smoke")
    for table, metrics in plan.TABLE_METRICS.items():
        page = (html / "book" / "generated" / f"table{table}.html").read_text(encoding="utf-8")
        assert f"Table {table}" in page
        parser = _Tables()
        parser.feed(page)
        cols = [c for c in plan.columns_for("smoke") if c.table == table and c.replicate_of is None]
        # the overview: a table per OVERVIEW_COLUMNS plan columns, each headed by the column's title (no ids)
        overviews = parser.tables[:-(-len(cols) // book.OVERVIEW_COLUMNS)]
        places = [(overview, j) for overview in overviews for j, h in enumerate(overview[0])
                  if h.endswith(": ours [95 % CI]")]
        assert len(places) == len(cols), [o[0] for o in overviews]
        for col, (overview, j) in zip(cols, places):
            assert len(overview) == 1 + len(metrics) and len(overview[0]) <= 1 + 2 * book.OVERVIEW_COLUMNS
            assert overview[0][j].replace("“", '"').replace("”", '"').replace("’", "'") == \
                f"{col.title}: ours [95 % CI]" and col.id not in overview[0][j]
            for i, metric in enumerate(metrics, start=1):
                value = found[col.id].metrics.get(metric)
                cell = overview[i][j]
                if value is not None:
                    assert NUMBER.match(cell), f"table {table}, {col.id}, {metric}: {cell!r} is not a number"
                # the published columns are filled wherever the paper printed a number, with its verdict mark
                pub = plan.published_value(table, col.compare_with, "follow-up", metric)
                if pub is not None:
                    followup, mark = (overview[i][j + 1].split(" / ")[0].split(" ") + [""])[:2]
                    assert NUMBER.match(followup) and mark in ("✓", "✗", "n/c"), \
                        (col.id, metric, overview[i][j + 1])
    # Each attack column says how its attack ran (device; BN folding and channels-last of the prepared model).
    table1 = (html / "book" / "generated" / "table1.html").read_text(encoding="utf-8")
    assert "How it ran:" in table1 and "BatchNorm folded into the convolutions" in table1
    for page in ("book/intro.html", "book/findings.html", "book/appendix.html", "book/generated/corrected.html",
                 "book/generated/columns/findings.html"):
        assert (html / page).exists(), page
    # No substitution leaks into the pages, the executed-notebooks page lists every column, each executed notebook
    # carries its column's title (the sidebar tells them apart), and each correction is listed once per column.
    for page in (html / "book").rglob("*.html"):  # our pages (the theme's _static templates are Jinja)
        assert "{{" not in page.read_text(encoding="utf-8"), f"unsubstituted text in {page}"
    listing = (html / "book" / "generated" / "notebooks.html").read_text(encoding="utf-8")
    titles = set()
    for col in plan.columns_for("smoke"):
        assert f"columns/{col.id}.html" in listing, col.id
        page = (html / "book" / "generated" / "columns" / f"{col.id}.html").read_text(encoding="utf-8")
        titles.add(re.search(r"<title>(.*?)</title>", page).group(1))
    assert len(titles) == len(plan.columns_for("smoke")), titles
    source = (tmp_path / "_build" / "source" / "book" / "generated" / "table1.md").read_text(encoding="utf-8")
    bullets = [line for line in source.splitlines() if line.startswith("- row printed as")
               or line.startswith("- column printed as")]
    for section in source.split("\n## ")[1:]:
        lines = [line for line in section.splitlines() if line in bullets]
        assert len(lines) == len(set(lines)), lines


def test_a_stale_result_is_marked_pending_on_the_landing_page_and_in_its_chapter(tmp_path):
    """A result computed with other code is shown as it is, but never without saying so: its id appears in the
    glance (README and landing page) and a warning heads the chapter that uses it."""
    found = book.load_found("smoke")
    assert book.stale_columns("smoke", found) == []  # the committed smoke results are up to date
    assert "Pending" not in book.glance("smoke", found)
    found["security_mnist"].fingerprint = "computed by other code"
    assert ("**Pending**: 1 of these results was computed with other code or parameters than the current plan and "
            "is shown as it is until") in book.glance("smoke", found)
    found["pgd_resnet20"].fingerprint = "computed by other code"
    assert book.stale_columns("smoke", found) == ["pgd_resnet20", "security_mnist"]
    assert "**Pending**: 2 of these results were computed with other code" in book.glance("smoke", found)
    stage = tmp_path / "src"
    stage.mkdir()
    shutil.copy2(results.repo_root() / "_config.yml", stage / "_config.yml")
    src = results.repo_root() / "results"
    shutil.copytree(src / "smoke", tmp_path / "res" / "smoke", ignore=shutil.ignore_patterns("models"))
    results.save(found["security_mnist"], tmp_path / "res" / "smoke" / "security_mnist.json")
    assert book.generate("smoke", results_dir=str(tmp_path / "res"), stage=stage) == []
    security = (stage / "book" / "generated" / "security.md").read_text()
    assert security.startswith("# ") and "Pending: the results of `security_mnist`" in security
    assert "Pending" not in (stage / "book" / "generated" / "training.md").read_text()


def test_reader_facing_findings_numbers_have_names_not_code_keys():
    """Before: the findings seed table showed `eps8_MR` and floats like 4.056e-06; an unknown key must fail."""
    label, show = book._findings_label("eps8_MR")
    assert label == 'MR, literal "ε = 8"' and show(0.996) == "99.6 %"
    assert book._findings_label("eps8_ASS_code")[1](4.056e-06) == "0.0000"
    with pytest.raises(KeyError, match="'eps8_new'"):
        book._findings_label("eps8_new")


def test_methods_numbers_come_from_the_recipes_and_the_results():
    """Before: Methods said DeepSec's CIFAR-10 schedule ended at 1e-4 (it ends at 5e-7), NAT took "about 3 minutes an
    epoch", and an ablation arm with DeepSec's optimiser that the profile does not train."""
    subs = book._methods_subs("quick", {})
    assert subs["m_deepsec_cifar_final_lr"] == "5e-07"  # 1e-3 · 0.1 · 0.1 · 0.1 · 0.5
    assert subs["m_nat_epoch_time"] == "no NAT model was trained under this profile"
    assert subs["m_ablation_arms"] == "; ".join(a.label for a in book.get_profile("quick").defence.ablation)
    # Before: "2 of its 20 epochs; three seeds are trained", typed by hand, stayed after quick moved to 20 epochs
    assert (subs["m_nat_budget"], subs["m_nat_seeds"]) == ("all 20 of its epochs", "seed 100")
    assert book._methods_subs("smoke", {})["m_nat_budget"] == "1 of its 20 epochs"
    assert book._methods_subs("paper", {})["m_nat_seeds"] == "seeds 100, 101, 102"
    # the PAT recipe's budget is the profile's, not typed into the page
    assert subs["m_pat_recipe"] == ("1 epoch on all available training images (the exact ones plus the JPEG copies "
                                    "of those the exact copy lacks), ε ramped from 0 over the first 0.4 epochs")
    assert book._methods_subs("smoke", {})["m_pat_recipe"] == "1 epoch on the first 256 training images, no ε ramp"


def test_a_column_on_deepsecs_checkpoint_does_not_list_a_raw_training_budget():
    res = _result("pgd_resnet20", {})
    res.provenance["models"] = {"raw": {"source": "DeepSec's released checkpoint"}}
    assert {"epochs", "train_subset"} <= book._unused_parameters(res)
    res.provenance["models"] = {"raw": {"source": "trained here"}}
    assert "epochs" not in book._unused_parameters(res)


def test_the_null_defence_sentence_follows_each_reference_separately():
    """Before: one sentence for both references said "the other published values are consistent with an untouched
    model" even where they were not."""
    C, I = Verdict.CONSISTENT, Verdict.INCONSISTENT
    rows = [{"metric": "ACC_raw", "null_verdict_followup": I, "null_verdict_deepsec": I},
            {"metric": "CRR", "null_verdict_followup": I, "null_verdict_deepsec": C},
            {"metric": "CAV", "null_verdict_followup": C, "null_verdict_deepsec": None}]
    text = book.null_defence_text(rows)
    assert "of the follow-up's values, CRR tells the published defence from no defence; CAV is consistent" in text
    assert "of DeepSec's values, none tells the published defence from no defence; CRR is consistent" in text
    assert "ACC raw" not in text


@pytest.mark.parametrize("threat_eps, line_at", [(0.3, 0.3), (8 / 255, 8.0)])
def test_accuracy_curves_mark_the_datasets_own_threat_model(threat_eps, line_at):
    """Before: the MNIST curves drew the threat-model line at 8/255 instead of 0.3."""
    from repro.report import figures

    fig = figures.accuracy_curves({"": {"eps": [0.0, threat_eps], "n": 10, "raw": [1.0, 0.5]}}, threat_eps=threat_eps)
    lines = [ln for ln in fig.axes[0].lines if ln.get_label() == "threat model ε"]
    assert len(lines) == 1 and lines[0].get_xdata()[0] == pytest.approx(line_at)


def test_accuracy_curves_without_a_threat_model_draw_no_line():
    """The notebooks call it without one: no line is better than another dataset's."""
    from repro.report import figures

    fig = figures.accuracy_curves({"": {"eps": [0.0, 0.3], "n": 10, "raw": [1.0, 0.5]}})
    assert not [ln for ln in fig.axes[0].lines if ln.get_label() == "threat model ε"]


def test_the_landing_page_summary_counts_what_the_tables_show():
    """The first lines of the landing page: claims by status and verdicts over every published cell, from the same
    decisions and rows the tables render (a status or a verdict added without its count would fail here)."""
    found = book.load_found("smoke")
    text = book.glance("smoke", found)
    decisions = claims.scorecard("smoke", found)
    assert f"of the follow-up's {len(decisions)} claims" in text
    n = sum(1 for d in decisions if d.status == claims.Status.INCONCLUSIVE)
    assert f"{n} inconclusive" in text
    cells = [r for c in plan.columns_for("smoke") if c.table in plan.TABLE_METRICS and not c.replicate_of
             and c.id in found for r in verdicts.comparison_rows(c, found[c.id], "smoke", found)
             for k in ("followup", "deepsec") if r[f"verdict_{k}"] is not None]
    assert f"Of the {len(cells)} published cells" in " ".join(text.split())


def test_the_corrected_columns_print_every_rate_with_its_interval(tmp_path):
    """Before: the corrected page printed bare points although Methods promises an interval for every number."""
    found = book.load_found("smoke")
    page = book._corrected_page("smoke", found, {k: True for k in found}, tmp_path)
    row = next(line for line in page.splitlines() if line.startswith("| MR (%)"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert all(re.fullmatch(r"-?[\d.]+ \[-?[\d.]+, -?[\d.]+\]", c) for c in cells[1:]), cells


def _ladder_arm(steps, iterations, k, n, ratio=None):
    arm = {"binary_search_steps": steps, "max_iterations": iterations, "iterations": steps * iterations,
           "success": {"rate": k / n, "k": k, "n": n, "low": 0.9, "high": 1.0}, "mean_l2": 1.5, "n_paired": k,
           "seconds_per_example": 2.0, "l2": []}
    if ratio is not None:
        arm["l2_ratio"] = dict(zip(("median", "mean", "low", "high", "max"), ratio))
    return arm


def test_the_table_1_page_shows_cw2s_budget_ladder_with_the_paired_ratios():
    cw2 = _result("cw2_mnist", {"MR": 1.0}, {"MR": {"low": 0.96, "high": 1.0, "n": 100}}, profile="quick")
    cw2.parameters = {"n_samples": 100, "binary_search_steps": 10, "max_iterations": 10_000}
    cw2.extra["budget_ladder"] = {"reference": {"binary_search_steps": 10, "max_iterations": 10_000}, "arms": [
        _ladder_arm(5, 500, 98, 100, (1.08, 1.10, 1.07, 1.13, 1.6)),
        _ladder_arm(10, 1000, 100, 100, (1.01, 1.00, 0.99, 1.02, 1.1)),
        _ladder_arm(10, 10_000, 100, 100, (1.0, 1.0, 1.0, 1.0, 1.0))]}
    arm = _result("cw2_mnist_5x500", {"MR": 0.99}, {"MR": {"low": 0.96, "high": 1.0, "n": 200}}, profile="quick")
    arm.parameters = {"n_samples": 200, "binary_search_steps": 5, "max_iterations": 500}
    page = book._budget_ladder_section("quick", {"cw2_mnist": cw2, "cw2_mnist_5x500": arm})
    assert "## CW2's iteration budget" in page
    assert "DeepSec runs CW2 for 10 × 10,000 on 1,000 candidates" in page and "runs\n10 × 10,000 on 100" in page
    rows = {line.split(" | ")[0].strip("| "): line for line in page.splitlines() if line.startswith("| ")}
    assert "1.100 [1.070, 1.130]" in rows["5 × 500"] and "above 1" in rows["5 × 500"]
    assert "contains 1" in rows["10 × 1,000"]
    assert "(the column's)" in page and "| – | 2.00 |" in rows["10 × 10,000 (the column's)"]
    assert "5 × 500 on 200 candidates (budget arm)" in page and "99.00 [96.00, 100.00]" in page
    # no ladder in the result (e.g. computed before it existed): no section
    cw2.extra = {}
    assert book._budget_ladder_section("quick", {"cw2_mnist": cw2}) == ""


def test_the_logit_shift_mechanism_sentences_follow_the_float32_measurement():
    """Before: Findings §4 explained the shift's effect by gradients that "round to exactly zero" without it, then
    printed 0 such candidates in both arms. Now the words come from the float32 measurement and change with it."""
    def evidence(plain_rounded, far):
        return {"n": 300, "float32": {
            "rounded": 147, "other": 153,
            "cosine_to_float64": {"shift": {"rounded": 1.0, "other": 1.0}, "no_shift": {"rounded": far, "other": 1.0}},
            "successes": {"fgsm": {"shift": {"rounded": 103, "other": 143},
                                   "no_shift": {"rounded": plain_rounded, "other": 144}}}}}

    explained = book._shift_subs(evidence(7, -0.54))
    assert explained["f_shift_lead"] == "The reason is float32 rounding."
    assert explained["f_shift_rounded"] == "147 of the 300"
    assert "-0.54 without the shift and 1.00 with it" in explained["f_shift_cosine"]
    assert explained["f_shift_split"].startswith("FGSM succeeds on 103 of the 147 with the shift and on 7 without")
    assert "adds 96 FGSM successes" in explained["f_shift_mechanism"] and "-1 on the others" in \
        explained["f_shift_mechanism"] and "true strength" in explained["f_shift_mechanism"]
    # the gradients agree on the rounded images: the book must not claim the mechanism
    open_case = book._shift_subs(evidence(7, 0.98))
    assert open_case["f_shift_lead"] == "One candidate explanation is float32 rounding."
    assert "does not explain" in open_case["f_shift_mechanism"] and "open" in open_case["f_shift_mechanism"]
    assert "true strength" not in open_case["f_shift_mechanism"]
    assert {"f_shift_lead", "f_shift_rounded", "f_shift_cosine", "f_shift_split", "f_shift_mechanism"} <= \
        set(book.FINDINGS_SUBS)
    text = (results.repo_root() / "book" / "findings.md").read_text(encoding="utf-8")
    assert all("{{ " + key + " }}" in text for key in ("f_shift_lead", "f_shift_cosine", "f_shift_mechanism"))


def test_the_landing_page_shows_the_literal_eps8_picture_from_its_own_notebook(tmp_path):
    found = book.load_found("smoke")
    col = next(c for c in plan.columns_for("smoke") if c.attack == "pgd" and c.table == "1"
               and c.parameters.get("eps", 0) >= 1)
    text = book.eps8_picture("smoke", found, results.repo_root() / "results" / "smoke", tmp_path)
    png = (tmp_path / "eps8_picture.png").read_bytes()
    assert png.startswith(b"\x89PNG") and png == book.notebook_figure(
        results.repo_root() / "results" / "smoke" / f"{col.id}.ipynb", "figures.adversarial_grid(")
    linf = found[col.id].metrics["ALD_Linf"]
    assert f"{linf:.3f}" in text and f"columns/{col.id}.ipynb" in text and text.rstrip().endswith("```")
    assert book.eps8_picture("smoke", {}, tmp_path, tmp_path) == ""  # no result: no picture


def test_the_distance_figure_draws_only_published_metrics_names_columns_and_labels_clipped_points():
    """Before: RIC rows drawn empty, column ids in the ticks and no legend, off-scale points without a value, and
    7-point labels on an 11-inch figure (about 6 px at page width)."""
    from repro.report import figures

    def row(metric, ours, pub):
        return {"metric": metric, "ours": ours, "low": ours, "high": ours, "followup": pub, "deepsec": None,
                "verdict_followup": Verdict.CONSISTENT, "verdict_deepsec": None}

    rows = {"cw2_mnist": [row("MR", 0.99, 0.998), row("RIC", 0.5, None)], "pgd_resnet20": [row("MR", 0.5, 1.0)]}
    fig = figures.distance_dots(rows, {"MR": lambda v: 0.005, "RIC": lambda v: 0.01}, labels={"MR": "MR"},
                                column_labels={"cw2_mnist": "CW2 column", "pgd_resnet20": "PGD column"})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["MR"]  # RIC has nothing published: no row
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["CW2 column", "PGD column"]
    assert "-100" in [t.get_text() for t in ax.texts]  # (0.5 − 1.0) / 0.005, clipped at −8 and labelled
    assert min(t.get_fontsize() for t in ax.get_yticklabels()) >= 9 and fig.get_figwidth() <= 9
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_the_corrected_page_states_the_curves_own_steps_and_madrys_anchor(tmp_path):
    """Before: the page said "10 steps of ε/4" for every profile (smoke's curves run 2) and typed Madry's 87.3 % /
    45.8 % by hand."""
    from repro.study.plan import anchor

    found = book.load_found("smoke")
    steps = {r.extra["accuracy_vs_eps"]["steps"] for r in found.values() if "accuracy_vs_eps" in r.extra}
    page = book._corrected_page("smoke", found, {c: True for c in found}, tmp_path)
    assert f"({' or '.join(map(str, sorted(steps)))} steps of ε/4" in page
    madry = anchor("madry_wrn")
    assert f"{100 * madry.clean:.1f} % clean and {100 * madry.pgd:.1f} %" in page


def test_the_glance_says_a_reason_shared_by_both_references_once():
    """Before: the PAT ResNet-20 row listed its four training departures twice, once per reference."""
    text = book.glance("quick", book.load_found("quick"))
    rows = [line for line in text.splitlines() if line.startswith("| ") and "not comparable with" in line]
    assert rows
    for row in rows:
        phrases = [re.sub(r"^not comparable with [^:]+: ", "", p.strip()) for p in row.split(" | ")[-1].split("; ")]
        assert len(phrases) == len(set(phrases)), row
    assert any("not comparable with either reference: " in row for row in rows)


def test_the_parameters_table_marks_the_raw_training_budget_unused_on_deepsecs_checkpoint():
    """Before: "Effective parameters: epochs=8" for columns that load DeepSec's released checkpoint."""
    from repro.report import figures

    def epochs_cell(model: str, profile: str) -> str:
        params = {"profile": profile, "model": model, "epochs": 8, "train_subset": None, "eps": 0.1}
        table = figures.parameters_table(params)
        assert table.loc["eps", "value"] == "0.1"
        return table.loc["epochs", "value"]

    assert epochs_cell("resnet20", "quick") == "8  (unused: the raw model is DeepSec's released checkpoint)"
    assert epochs_cell("resnet20", "paper") == "8"  # the paper profile trains it
    assert epochs_cell("wide_resnet", "quick") == "8"  # DeepSec released no wide ResNet


def test_what_we_found_is_generated_from_the_data_and_changes_with_it():
    """The landing page's five sentences come from the verdicts, the claims and the security results; a sentence
    whose data changes must change (a robust model above the anchor is not called weakly robust; a table without
    unmeasured-only cells promises no settling run; an ε = 8 within Madry's budget is not called beyond it)."""
    from repro.report.templates import render
    from repro.study.claims import Decision, Status

    table = {"total": 10, "consistent": 6, "inconsistent": 1, "not_comparable": 3, "unmeasured_only": 2,
             "blocking": [{"departure": "defence training epochs 5 instead of the recipe's", "cells": 3,
                           "measured": False, "why": "it needs the paper's run"}]}
    model = {"label": "m", "rate": 0.1, "low": 0.05, "high": 0.2, "n": 200}
    robust = {"lowest": model, "highest": {**model, "label": "w", "rate": 0.4, "low": 0.3, "high": 0.5},
              "arm": None, "n": "200", "anchor": {"model": "RobustBench's ResNet-20", "autoattack": 0.35},
              "below": False}
    eps8 = Decision("eps8_is_madry", Status.REFUTED, "linf_beyond_madry", {"ours": 0.975, "ratio": 31.1})
    context = dict(profile="quick", tables={"1": table, "2": {**table, "unmeasured_only": 0}}, eps8=eps8,
                   claims={"confirmed": ["nat_increases_accuracy"], "refuted": ["eps8_is_madry"], "inconclusive": [],
                           "not tested here": []},
                   cells={"total": 20, "consistent": 12, "inconsistent": 2, "not_comparable": 6}, robust=robust,
                   widths={"tested": [1, 2], "paper": 10})
    text = render("glance_found.md.j2", **context)
    lines = [line for line in text.splitlines() if line[:2] in {f"{i}." for i in range(1, 7)}]
    assert len(lines) == 6
    assert "widths ×1, ×2" in lines[5] and "×10 is the `paper` profile's run" in lines[5]
    assert "width ×1 (" in render("glance_found.md.j2", **{**context, "widths": {"tested": [1], "paper": 10}})
    assert "12 are ✓ consistent" in text and "1 confirmed, 1 refuted, 0 inconclusive, 0 not tested here." in text
    assert "×31 Madry's 8/255" in lines[0]
    assert "6 of its 10" in lines[1] and "in 3 cells: defence training epochs 5" in lines[1]
    assert "not measured here (it needs the paper's run)" in lines[1] and "would settle 2 of them" in lines[1]
    assert "would settle" not in lines[2]
    assert "confirmed: NAT increases accuracy; refuted: \"ε = 8\" is Madry et al.'s budget." in lines[3]
    assert lines[4].startswith("5. **How robust the PAT models are**") and "below" not in lines[4]
    assert "weakly robust" in render("glance_found.md.j2", **{**context, "robust": {**robust, "below": True}})
    assert "ablation" not in lines[4]  # no arm more robust than the study's models: none named
    arm = {**model, "label": "arm 8", "rate": 0.45, "low": 0.38, "high": 0.52}
    with_arm = render("glance_found.md.j2", **{**context, "robust": {**robust, "arm": arm}})
    assert "reaches 45.0 % [38.0 %, 52.0 %] for the training ablation's most robust model (arm 8)" in with_arm
    within = render("glance_found.md.j2", **{**context, "eps8": Decision("eps8_is_madry", Status.UNTESTED,
                                                                         "linf_within_madry", {"ours": 0.03})})
    assert "stays within Madry" in within and "not Madry" not in within


def test_a_carried_model_is_said_in_its_columns_section():
    record = {"from_code": "a" * 64, "to_code": "b" * 64, "checked_commit": "c",
              "probe": {"epochs": 5, "images": 64, "identical": True}}
    notes = book.carried_notes({"models": {"defended": {"carried": [record]}, "raw": {"source": "deepsec"}}})
    assert notes == ["defended model trained by training code aaaaaaaaaa and carried to bbbbbbbbbb without "
                     "retraining: a 5-epoch probe of its configuration on 64 images trained bit for bit alike under "
                     "both"]
    assert book.carried_notes({"models": {"raw": {"source": "deepsec"}}}) == []


def test_the_findings_seed_table_prints_each_seeds_rates_with_their_intervals():
    """Before: the seed table printed rates as bare percentages (Methods promises an interval for every rate)."""
    from types import SimpleNamespace

    from repro.metrics.uncertainty import clopper_pearson

    result = SimpleNamespace(metrics={"eps8_MR": 1.0, "fgsm_MR_shift": 0.82, "eps8_saturated": 0.688,
                                      "eps8_ALD_Linf": 0.97},
                             extra={"eps8": {"n": 300, "eps8": {"saturated_interval": [0.687, 0.690]}},
                                    "logit_shift": {"n": 300}})
    low, high = clopper_pearson(246, 300)
    assert book._findings_interval("fgsm_MR_shift", result) == f" [{100 * low:.1f}, {100 * high:.1f}]"
    assert book._findings_interval("eps8_MR", result) == " [98.8, 100.0]"
    assert book._findings_interval("eps8_saturated", result) == " [68.7, 69.0]"
    assert book._findings_interval("eps8_ALD_Linf", result) == ""  # a distance, not a rate


def test_every_phrase_is_used_and_an_unknown_one_is_an_error():
    """phrases.md.j2 holds no dead prose: each macro is called by the report's code (by name) or by a template."""
    import re

    from repro.report import templates

    module = templates._environment().get_template(templates.PHRASES).module
    text = (templates.TEMPLATE_DIR / templates.PHRASES).read_text(encoding="utf-8")
    macros = re.findall(r"\{% macro (\w+)\(", text)
    assert macros and all(hasattr(module, m) for m in macros)
    code = "".join(f.read_text(encoding="utf-8") for f in (results.repo_root() / "repro" / "report").glob("*.py"))
    calls = "".join(t.read_text(encoding="utf-8") for t in templates.TEMPLATE_DIR.glob("*.j2"))
    calls = re.sub(r"\{% macro \w+\(", "", calls)  # a definition is not a use
    unused = [m for m in macros if not re.search(rf"""phrase\(\s*["']{m}["']""", code) and f"{m}(" not in calls]
    assert not unused, unused
    with pytest.raises(KeyError, match="no phrase 'nope'"):
        templates.phrase("nope")
    with pytest.raises(Exception, match="'departure' was not provided"):
        templates.phrase("effect_measured", low="+1", high="+2")
