"""Render the report's Markdown templates (``repro/report/templates/*.md.j2``, Jinja2): prose lives there, numbers
come in as data. Undefined names are errors, never empty text.

Whole sections are templates of their own (:func:`render`); the clauses and sentences that the report assembles from
data (an effect's wording, a note, a verdict's reason) are the macros of ``phrases.md.j2`` (:func:`phrase`)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

from .markdown import num, pct

TEMPLATE_DIR = Path(__file__).with_name("templates")


@lru_cache(maxsize=None)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters.update(pct=pct, num=num)
    return env


def render(name: str, **context) -> str:
    """The template ``name`` (a file in :data:`TEMPLATE_DIR`) rendered with ``context``.

    Raises:
        jinja2.TemplateNotFound: no such template; jinja2.UndefinedError: the template uses a name not given.
    """
    return _environment().get_template(name).render(**context)


PHRASES = "phrases.md.j2"


def phrase(name: str, **context) -> str:
    """The macro ``name`` of :data:`PHRASES` (one clause or sentence of the report's prose) rendered with
    ``context`` (each macro trims its own surrounding whitespace; its arguments' are kept).

    Raises:
        KeyError: no such macro; jinja2.UndefinedError: the macro uses a name not given.
    """
    module = _environment().get_template(PHRASES).module
    macro = getattr(module, name, None)
    if not isinstance(macro, jinja2.runtime.Macro):
        raise KeyError(f"no phrase {name!r} in {TEMPLATE_DIR / PHRASES}")
    return str(macro(**context))
