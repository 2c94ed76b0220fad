"""The book as a reader's browser lays it out (repro.report.layout): no table past the content column, no figure
text below the stated size; the figures record their smallest text; the measurement itself can fail."""
from __future__ import annotations

import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from repro import results  # noqa: E402
from repro.report import figures, layout  # noqa: E402
from repro.report.training import curves_figure  # noqa: E402

def _no_chromium() -> bool:
    try:
        layout.chromium()
    except layout.LayoutError:
        return True
    return False


needs_chromium = pytest.mark.skipif(_no_chromium(),
                                    reason="no Chromium on this machine (Debian: apt-get install chromium; .ci/run "
                                           "installs it): the book's layout is not checked here")


def _figure(tmp_path, *, small: float, inches: float = 4.0):
    fig, ax = plt.subplots(figsize=(inches, 2))
    ax.plot([0, 1], [0, 1], label="a line")
    ax.set_title("a title", fontsize=12)
    ax.legend(fontsize=small)
    ax.tick_params(labelsize=10)
    path = tmp_path / "figure.png"
    figures.save(fig, path)
    return path


def test_a_saved_figure_records_its_smallest_text_and_resolution(tmp_path):
    from PIL import Image

    path = _figure(tmp_path, small=7)
    with Image.open(path) as image:
        natural = image.width
        assert image.text[figures.SMALLEST_TEXT_KEY] == "7" and image.text[figures.DPI_KEY] == "100"
    # 7 pt at 100 dpi is 9.72 px at natural size; shown at half its width, 4.86 px
    assert layout.smallest_text_px(path, natural=natural, shown=natural) == pytest.approx(7 * 100 / 72)
    assert layout.smallest_text_px(path, natural=natural, shown=natural / 2) == pytest.approx(7 * 100 / 72 / 2)


def test_check_names_a_table_past_the_column_a_clipped_one_small_text_and_what_it_cannot_measure(tmp_path):
    png = _figure(tmp_path, small=8)
    page = layout.Page(
        path="book/x.html", column={"left": 0, "right": 800, "width": 800},
        tables=[{"index": 0, "left": 0, "right": 800.4, "width": 800.4, "clipped": False, "header": "fits"},
                {"index": 1, "left": 0, "right": 1054, "width": 1054, "clipped": False, "header": "too wide"},
                {"index": 2, "left": 0, "right": 790, "width": 790, "clipped": True, "header": "scrolls"}],
        images=[{"src": png.as_uri(), "natural": 400, "shown": 400},  # 8 pt → 11.1 px: fine
                {"src": png.as_uri(), "natural": 400, "shown": 300},  # 8.3 px: too small
                {"src": "data:image/png;base64,AAAA", "natural": 10, "shown": 10}])
    layout.check(page, tmp_path)
    assert len(page.problems) == 3, page.problems
    assert "table 2 ('too wide') is 1054 px wide and ends at 1054 px, past the content column (800 px" in \
        page.problems[0]
    assert page.problems[1].endswith("behind a scroll bar")
    assert "figure.png shows its smallest text at 8.3 px (400 px wide shown at 300 px), below 10 px" in \
        page.problems[2]
    assert len(page.unmeasured) == 1


def test_the_training_figure_names_its_validation_attack_on_the_right_panel():
    """Before: the loop reused the name of the ``pgd`` argument for the accuracies, so the right panel was titled
    "validation accuracy under [0.468, 0.232, ...]" (seen in the layout check's screenshots)."""
    history = [{"epoch": 1, "val_acc": 0.5, "pgd_acc": 0.1}, {"epoch": 2, "val_acc": 0.6, "pgd_acc": 0.2}]
    fig = curves_figure({"models": {"m": {"label": "a model", "training": {"history": history}}}},
                        pgd="PGD, ε = 8/255, 7 steps of 2/255")
    assert fig.axes[1].get_title() == "validation accuracy under PGD, ε = 8/255, 7 steps of 2/255"
    plt.close(fig)


@pytest.fixture(scope="module")
def quick_book(tmp_path_factory):
    from repro.pipeline import build_book

    out = tmp_path_factory.mktemp("quick-book")
    return build_book("quick", results_dir=str(results.repo_root() / "results"), output=out, log=lambda *a: None)


@pytest.mark.slow
@needs_chromium
def test_every_page_of_the_quick_book_fits_a_1400px_window(quick_book):
    pages = layout.measure(quick_book)
    assert len(pages) >= 20 and any(p.path == "book/generated/table1.html" for p in pages)
    assert any(p.tables for p in pages) and any(img for p in pages for img in p.images)
    problems = [p for page in pages for p in page.problems]
    assert not problems, "\n".join(problems)
    # the figures the book draws were measured, not skipped as unmeasured (a notebook's own figures are)
    measured = [img for page in pages for img in page.images if "/_images/" in img["src"]]
    unmeasured = {u.split(": ")[-1] for page in pages for u in page.unmeasured}
    assert {"table1_distance.png", "security_transfer.png", "training_curves_training_cifar10.png"} <= \
        {img["src"].rsplit("/", 1)[-1] for img in measured} - unmeasured


@pytest.mark.slow
@needs_chromium
def test_the_layout_check_fails_on_a_planted_wide_table_and_a_shrunken_figure(quick_book, tmp_path):
    """The check in the browser can fail: a 40-column table and a figure shown at a third of its width."""
    from PIL import Image

    png = _figure(tmp_path, small=9, inches=9)
    shutil.copy(png, quick_book / "_images" / "planted.png")
    with Image.open(png) as image:
        natural = image.width
    source = (quick_book / "book" / "methods.html").read_text(encoding="utf-8")
    cells = "".join(f"<td>column-{i}-with-a-long-name</td>" for i in range(40))
    planted = f'<table><tr>{cells}</tr></table><img src="../_images/planted.png" width="{natural // 3}">'
    marker = source.index("</h1>", source.index("<article")) + len("</h1>")  # inside the content column
    page = quick_book / "book" / "planted.html"
    page.write_text(source[:marker] + planted + source[marker:], encoding="utf-8")
    try:
        (measured,) = layout.measure(quick_book, ["book/planted.html"])
    finally:
        page.unlink()
    assert len(measured.problems) == 2, measured.problems
    assert "table 1 ('column-0-with-a-long-name" in measured.problems[0]
    assert "figure planted.png shows its smallest text at" in measured.problems[1]
