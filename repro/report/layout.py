"""The built book as a reader's browser lays it out: tables that overflow the content column, figure text too small.

Each page of ``_build/html/book`` is copied with a small script (``templates/layout.js``) that records, after the
page has laid out, the content column's box, every table's box and every image's natural and shown width; headless
Chromium renders the copy at :data:`WIDTH` px and dumps the DOM, from which :func:`measure` reads the record back.
A figure the book draws carries its smallest text size and resolution in its PNG (:func:`repro.report.figures.save`),
so its smallest text on the page is ``pt × dpi / 72 × shown / natural`` CSS pixels; an image without that record
(a notebook's output) is listed as unmeasured, never assumed legible.

    python -m repro.report.layout _build/html     # one line per problem; exit status 1 if there is any
"""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from . import figures

WIDTH = 1400  # the browser window's width in CSS px: a laptop screen
MIN_TEXT_PX = 10.0  # the smallest figure text allowed on the page, in CSS px (body text is 16 px)
TOLERANCE_PX = 1.0  # sub-pixel rounding of the boxes
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")
_SCRIPT = Path(__file__).parent / "templates" / "layout.js"
_RECORD = re.compile(r'<pre id="repro-layout"[^>]*>(.*?)</pre>', re.S)


class LayoutError(RuntimeError):
    """No Chromium, or a page Chromium could not lay out."""


def chromium() -> str:
    """The path of a Chromium (or Chrome) executable on ``PATH``."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise LayoutError("no Chromium found; install it (Debian: apt-get install -y chromium)")


def book_pages(root: str | Path) -> list[Path]:
    """The pages of the built book under ``root/book`` (not a measuring copy left by a killed run, whose name starts
    with a dot)."""
    return sorted(p for p in (Path(root) / "book").rglob("*.html") if not p.name.startswith("."))


@dataclass
class Page:
    """One page as laid out: its path (relative to the HTML root), the content column's width and right edge, its
    tables and images as ``templates/layout.js`` records them."""

    path: str
    column: dict
    tables: list[dict]
    images: list[dict]
    problems: list[str] = field(default_factory=list)
    unmeasured: list[str] = field(default_factory=list)


def _image_file(src: str, root: Path) -> Path | None:
    parsed = urlparse(src)
    if parsed.scheme != "file":
        return None
    path = Path(unquote(parsed.path))
    return path if path.is_file() and root in path.parents else None


def smallest_text_px(png: Path, *, natural: float, shown: float) -> float | None:
    """The smallest text of a figure the book draws, in CSS px as shown (``None`` without the record in the file)."""
    from PIL import Image

    with Image.open(png) as image:
        info = getattr(image, "text", {}) or {}
    if figures.SMALLEST_TEXT_KEY not in info or figures.DPI_KEY not in info or not natural:
        return None
    return float(info[figures.SMALLEST_TEXT_KEY]) * float(info[figures.DPI_KEY]) / 72.0 * shown / natural


def check(page: Page, root: Path, *, min_text_px: float = MIN_TEXT_PX) -> Page:
    """Fill ``page.problems`` (a table past the content column or clipped by a scroll container; figure text below
    ``min_text_px``) and ``page.unmeasured`` (images without a text-size record)."""
    right = page.column["right"] + TOLERANCE_PX
    for t in page.tables:
        if t["clipped"] or t["right"] > right:
            page.problems.append(f"{page.path}: table {t['index'] + 1} ({t['header'][:50]!r}) is {t['width']:.0f} px "
                                 f"wide and ends at {t['right']:.0f} px, past the content column "
                                 f"({page.column['width']:.0f} px, ending at {page.column['right']:.0f} px)"
                                 + (", behind a scroll bar" if t["clipped"] else ""))
    for img in page.images:
        png = _image_file(img["src"], root)
        px = smallest_text_px(png, natural=img["natural"], shown=img["shown"]) if png else None
        name = png.name if png else img["src"][-60:]
        if px is None:
            page.unmeasured.append(f"{page.path}: {name}")
        elif px < min_text_px - 1e-9:
            page.problems.append(f"{page.path}: figure {name} shows its smallest text at {px:.1f} px "
                                 f"({img['natural']} px wide shown at {img['shown']:.0f} px), below {min_text_px:g} px")
    return page


def measure(root: str | Path, pages: list[str] | None = None, *, width: int = WIDTH, timeout: float = 60) -> list[Page]:
    """Lay out ``pages`` (paths relative to the built HTML ``root``; default: every page under ``book/``) in headless
    Chromium ``width`` px wide, and check each (:func:`check`). The copies with the script are removed afterwards."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise LayoutError(f"{root} is not a built book (make book)")
    browser = chromium()
    script = _SCRIPT.read_text(encoding="utf-8")
    paths = pages or [p.relative_to(root).as_posix() for p in book_pages(root)]
    out = []
    for rel in paths:
        page = root / rel
        text = page.read_text(encoding="utf-8")
        end = text.rfind("</body>")
        if end < 0:
            raise LayoutError(f"{page} has no </body>")
        with tempfile.NamedTemporaryFile("w", suffix=".html", prefix=".layout-", dir=page.parent,
                                         encoding="utf-8", delete=False) as copy:
            copy.write(text[:end] + f"<script>{script}</script>" + text[end:])
        try:
            with tempfile.TemporaryDirectory() as profile:
                proc = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},2000",
                                       "--virtual-time-budget=5000", "--dump-dom", Path(copy.name).as_uri()],
                                      capture_output=True, text=True, timeout=timeout)
        finally:
            Path(copy.name).unlink(missing_ok=True)
        found = _RECORD.findall(proc.stdout)
        if proc.returncode != 0 or not found:
            raise LayoutError(f"Chromium did not lay out {page} (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        record = json.loads(html.unescape(found[-1]))
        out.append(check(Page(path=rel, column=record["column"], tables=record["tables"], images=record["images"]),
                         root))
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m repro.report.layout _build/html", file=sys.stderr)
        return 2
    try:
        pages = measure(args[0])
    except LayoutError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problems = [p for page in pages for p in page.problems]
    unmeasured = [u for page in pages for u in page.unmeasured]
    for line in problems:
        print(line)
    print(f"{len(pages)} pages at {WIDTH} px: {len(problems)} layout problem(s); {len(unmeasured)} image(s) without "
          "a text-size record (notebook outputs), not measured")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
