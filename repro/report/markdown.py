"""Formatting shared by every page of the book: the Markdown table syntax and the way numbers are written (one home
for each; the templates get :func:`pct` and :func:`num` as filters)."""
from __future__ import annotations

import math

NOT_COMPUTED = "–"  # a value that was not computed, or not published


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown pipe table (cells converted with ``str``; a ``|`` inside a cell escaped), ending in a newline."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in rows]) + "\n"


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage with ``digits`` decimals (0.458 → "45.8 %"); :data:`NOT_COMPUTED` for ``None``."""
    return NOT_COMPUTED if value is None else f"{100 * value:.{digits}f} %"


def num(value: float | None, digits: int = 3) -> str:
    """A plain number with ``digits`` decimals; :data:`NOT_COMPUTED` for ``None``."""
    return NOT_COMPUTED if value is None else f"{value:.{digits}f}"


def fixed(value, digits: int = 3) -> str:
    """A number with ``digits`` decimals, "∞" for infinity, :data:`NOT_COMPUTED` for ``None`` or NaN, never "-0.000"."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "∞" if value == math.inf else NOT_COMPUTED
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def with_interval(record: dict | None) -> str:
    """A rate record as "45.8 % [41.2, 50.3]" (the 95 % Clopper–Pearson interval, in percent)."""
    if record is None:
        return NOT_COMPUTED
    return f"{pct(record['rate'])} [{100 * record['low']:.1f}, {100 * record['high']:.1f}]"


def eps_text(value: float) -> str:
    """ε as the reader knows it: k/255 when it is one, else a decimal."""
    k = value * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and value < 1 else f"{value:g}"
