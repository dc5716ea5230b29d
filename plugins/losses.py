"""Built-in losses and penalties, registered as parts from the one table of their names, descriptions, fused forms
and included penalties (``rdpo_zoo.loss_names``, no torch); the formulas (``rdpo_zoo.losses``) are imported when a
part is built.
"""

from __future__ import annotations

import rdpo_zoo
from rdpo_zoo import LossPart, PenaltyPart
from rdpo_zoo.loss_names import LOSS_NAMES, PENALTY_NAMES


def _loss(name: str):
    """A lazy factory: ``rdpo_zoo.losses.PAIRWISE_LOSSES[name]``, imported when the part is built."""

    def factory():
        from rdpo_zoo.losses import PAIRWISE_LOSSES

        return PAIRWISE_LOSSES[name]

    factory.__qualname__ = f"PAIRWISE_LOSSES[{name!r}]"
    return factory


def _penalty(name: str):
    def factory():
        from rdpo_zoo.losses import PENALTIES

        return PENALTIES[name]

    factory.__qualname__ = f"PENALTIES[{name!r}]"
    return factory


@rdpo_zoo.hookimpl
def register_losses(register):
    for entry in LOSS_NAMES.values():
        register(LossPart(entry.name, entry.description, _loss(entry.formula), fused=entry.fused,
                          penalty=entry.penalty))


@rdpo_zoo.hookimpl
def register_penalties(register):
    for entry in PENALTY_NAMES.values():
        register(PenaltyPart(entry.name, entry.description, _penalty(entry.name), fused=entry.fused,
                             default_lambda=entry.default_lambda))
