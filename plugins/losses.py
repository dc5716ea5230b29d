"""Built-in losses and penalties: the formulas of ``rdpo_zoo.losses`` (the one source of truth), registered as
parts. This module holds names, one-line descriptions and options only; the formulas are imported when a part is
built. ``tests/test_plugins.py`` checks that the descriptions and fused forms here are those of
``rdpo_zoo.losses.PAIRWISE_LOSSES``/``PENALTIES`` and the aliases those of ``LOSS_ALIASES``.
"""

from __future__ import annotations

import rdpo_zoo
from rdpo_zoo import LossPart, PenaltyPart


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
    register(LossPart("dpo", "DPO / D3PO: −log σ(β(r_w − r_l) − λ·penalty)", _loss("dpo"), fused="dpo"))
    # D3PO's loss is DPO applied per denoising step (Yang et al. 2024, Eq. 4); the `d3po` preset adds its code's
    # ratio clamp ε = 0.1 and β = 0.1 (yk7333/d3po config/base.py). One formula: LOSS_ALIASES["d3po"].
    register(LossPart("d3po", "D3PO's loss: dpo per denoising step (its preset adds the ratio clamp ε = 0.1)",
                      _loss("dpo"), fused="dpo"))
    register(LossPart("ipo", "IPO: ((r_w − r_l) − 1/(2β))², squared-error on the gap", _loss("ipo"), fused="ipo"))
    register(LossPart("hinge", "hinge / SLiC: max(0, 1 − β(r_w − r_l))", _loss("hinge"), fused="hinge"))
    # RDPO (Eq. 9) is DPO with the Ψ penalty: one implementation, LOSS_ALIASES["rdpo"] = ("dpo", "psi").
    register(LossPart("rdpo", "RDPO: dpo with RDPO's Ψ penalty included (= loss dpo + penalty psi)",
                      _loss("dpo"), fused="dpo", penalty="psi"))


@rdpo_zoo.hookimpl
def register_penalties(register):
    # The RDPO paper's λ is 100 (printed "1, 00"; its ablation tries 10, 100, 10 000), at its scale. Ours, here and
    # in the rdpo preset, is λ = β's default, 0.1: with the mean reduction λ/β = 1000 lets Ψ's push on an active
    # loser (λ·σ(−z)) swamp DPO's (β·σ(−z)) under Adam, which on the embedded world erased the guided gain
    # (docs/reproduction.md, Table 1 and Fig. 3; docs/rollout.md for the main job's λ runs).
    register(PenaltyPart("psi", "RDPO's Ψ (intended sign): λ·max(0, r_l) keeps the loser down", _penalty("psi"),
                         fused="psi", default_lambda=0.1))
    register(PenaltyPart("psi-literal", "RDPO's Ψ as printed: −λ·max(0, r_l) (rewards a rising r_l)",
                         _penalty("psi-literal"), fused="psi-literal", default_lambda=100.0))
    # DPOP (Pal et al. 2024) writes β(… − λ·max(0, −r_w)) with λ = 50 (PaddleNLP dpo_criterion.py dpop_lambda);
    # our λ is not multiplied by β, so DPOP's objective at the default β = 0.1 is λ = 50·0.1 = 5.
    register(PenaltyPart("dpop", "DPOP: λ·max(0, −r_w) keeps the winner up", _penalty("dpop"), fused="dpop",
                         default_lambda=5.0))
