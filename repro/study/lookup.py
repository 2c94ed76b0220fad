"""Find the plan's columns by what they run (attack or defence, ε, model, table), so that code above the plan never
names a column id: the ids live in :mod:`repro.study.plan` and the published CSVs only."""
from __future__ import annotations

from .plan import Column, columns_for


def columns_running(profile: str, *, attack: str | None = None, defence: str | None = None,
                    literal_eps: bool | None = None, model: str | None = None, table: str | None = None,
                    replicates: bool = False) -> list[Column]:
    """The columns of ``profile``, in plan order, that run ``attack``/``defence`` (``literal_eps``: ε ≥ 1, the
    follow-up's "ε = 8" taken literally; False: a budget below 1), on ``model``, in ``table`` (seed replicates only
    with ``replicates``)."""
    out = []
    for col in columns_for(profile):
        p = col.parameters
        if (col.replicate_of and not replicates) or (attack and col.attack != attack) or \
                (defence and col.defence != defence) or (model and p.get("model") != model) or \
                (table and col.table != table):
            continue
        if literal_eps is not None and (p.get("eps") is None or (p["eps"] >= 1) != literal_eps):
            continue
        out.append(col)
    return out


def column_running(profile: str, **criteria) -> Column | None:
    """The first column of :func:`columns_running` (``None`` if there is none)."""
    cols = columns_running(profile, **criteria)
    return cols[0] if cols else None
