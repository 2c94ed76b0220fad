"""Markdown rendering shared by every page of the book (one home for the table syntax)."""
from __future__ import annotations


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown pipe table (cells converted with ``str``; a ``|`` inside a cell escaped), ending in a newline."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in rows]) + "\n"
