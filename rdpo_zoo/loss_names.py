"""The built-in losses' and penalties' names: one table of each, with the formula a name computes, the penalty it
includes, its one-line description and its fused kernel form. ``rdpo_zoo.losses`` builds its formula objects and
aliases from it and ``plugins/losses.py`` registers its parts from it, so the two cannot disagree. No torch here.

The one rule for a penalty a loss includes (``rdpo`` is ``dpo`` with ``psi``): :func:`second_penalty`, used
wherever a loss and a penalty meet (settings resolution, ``build_loss``, ``rdpo_zoo.losses.resolve_loss``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["LossName", "PenaltyName", "LOSS_NAMES", "PENALTY_NAMES", "second_penalty"]


@dataclass(frozen=True)
class LossName:
    name: str
    formula: str  # the name of the formula in rdpo_zoo.losses (itself, or the one it aliases)
    description: str
    fused: Optional[str]
    penalty: Optional[str] = None  # a penalty the loss always includes


@dataclass(frozen=True)
class PenaltyName:
    name: str
    description: str
    fused: Optional[str]
    default_lambda: float


LOSS_NAMES = {entry.name: entry for entry in (
    LossName("dpo", "dpo", "DPO / D3PO: −log σ(β(r_w − r_l) − λ·penalty)", fused="dpo"),
    # D3PO's loss is DPO applied per denoising step (Yang et al. 2024, Eq. 4); the `d3po` preset adds its code's
    # ratio clamp ε = 0.1 and β = 0.1 (yk7333/d3po config/base.py). One formula: dpo's.
    LossName("d3po", "dpo", "D3PO's loss: dpo per denoising step (its preset adds the ratio clamp ε = 0.1)",
             fused="dpo"),
    LossName("ipo", "ipo", "IPO: ((r_w − r_l) − 1/(2β))², squared-error on the gap", fused="ipo"),
    LossName("hinge", "hinge", "hinge / SLiC: max(0, 1 − β(r_w − r_l))", fused="hinge"),
    # RDPO (Eq. 9) is DPO with the Ψ penalty: one implementation, dpo's, with psi included.
    LossName("rdpo", "dpo", "RDPO: dpo with RDPO's Ψ penalty included (= loss dpo + penalty psi)", fused="dpo",
             penalty="psi"),
)}

PENALTY_NAMES = {entry.name: entry for entry in (
    # The RDPO paper's λ is 100 (printed "1, 00"; its ablation tries 10, 100, 10 000), at its scale. Ours, here and
    # in the rdpo preset, is λ = β's default, 0.1: with the mean reduction λ/β = 1000 lets Ψ's push on an active
    # loser (λ·σ(−z)) swamp DPO's (β·σ(−z)) under Adam, which on the embedded world erased the guided gain
    # (docs/reproduction.md, Table 1 and Fig. 3; docs/rollout.md for the main job's λ runs).
    PenaltyName("psi", "RDPO's Ψ (intended sign): λ·max(0, r_l) keeps the loser down", fused="psi",
                default_lambda=0.1),
    PenaltyName("psi-literal", "RDPO's Ψ as printed: −λ·max(0, r_l) (rewards a rising r_l)", fused="psi-literal",
                default_lambda=100.0),
    # DPOP (Pal et al. 2024) writes β(… − λ·max(0, −r_w)) with λ = 50 (PaddleNLP dpo_criterion.py dpop_lambda);
    # our λ is not multiplied by β, so DPOP's objective at the default β = 0.1 is λ = 50·0.1 = 5.
    PenaltyName("dpop", "DPOP: λ·max(0, −r_w) keeps the winner up", fused="dpop", default_lambda=5.0),
)}


def second_penalty(loss: str, included: Optional[str], penalty: Optional[str], where: str = "",
                   instead: str = "") -> Optional[str]:
    """The one rule: a loss that includes a penalty (``included``) takes no second one. Returns the error message
    when ``penalty`` is a second one (each caller raises it as its own error type), else ``None``. ``where`` says
    where the second penalty came from (``"given"``, ``"from preset 'spo'"``), ``instead`` what to do about it."""
    if included is None or penalty is None:
        return None
    source = f" ({where})" if where else ""
    return (f"penalty: loss {loss!r} already includes the {included!r} penalty; penalty {penalty!r}{source} as well "
            f"would count it twice" + (f" ({instead})" if instead else ""))
