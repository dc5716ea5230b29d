"""Labelling candidates into preference pairs: which one wins, which loses, and whether the pair is kept. One helper
for every pair-producing rollout (branching, two trajectories, noised pairs), so that the pair filter means the same
everywhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["GAP_RULES", "Labels", "label_candidates", "gap_keep", "kept_stats"]

#: ``raw``: keep a pair when Δ/scale > threshold. ``softmax``: SPO's rule, keep when
#: softmax([s_w, s_l])[0] − softmax(...)[1] = tanh(Δ/2) > threshold, with Δ in units of the reward's scale.
GAP_RULES = ("raw", "softmax")


def gap_keep(gap: torch.Tensor, scale: float, threshold: float, rule: str) -> torch.Tensor:
    """``[B]`` bool: the pairs whose value gap passes the filter (see :data:`GAP_RULES`)."""
    if rule not in GAP_RULES:
        raise ValueError(f"gap_rule: expected one of {GAP_RULES}, got {rule!r}")
    normalised = gap / scale
    if rule == "softmax":
        return torch.tanh(normalised / 2) > threshold
    return normalised > threshold


@dataclass
class Labels:
    """The labels of B groups of k candidates: ``winner``/``loser`` ``[B]`` candidate indices, ``gap`` ``[B]`` their
    value difference (≥ 0), ``keep`` ``[B]`` whether the group gives a pair."""

    winner: torch.Tensor
    loser: torch.Tensor
    gap: torch.Tensor
    keep: torch.Tensor

    @property
    def kept(self) -> torch.Tensor:
        """The indices of the kept groups."""
        return self.keep.nonzero()[:, 0]


def label_candidates(values: torch.Tensor, scale: float, threshold: float, gap_rule: str,
                     extra_keep: Optional[torch.Tensor] = None) -> Labels:
    """Label ``values`` ``[B, k]`` (higher is preferred): the best candidate wins, the worst loses, and the group is
    kept when the gap passes ``gap_rule`` at ``threshold`` (in units of the reward's ``scale``), the two differ (a tie
    gives no pair), and ``extra_keep`` (an estimator's own ``[B]`` mask), if given, allows it."""
    rows = torch.arange(values.shape[0], device=values.device)
    winner, loser = values.argmax(1), values.argmin(1)
    gap = values[rows, winner] - values[rows, loser]
    keep = gap_keep(gap, scale, threshold, gap_rule) & (winner != loser)
    if extra_keep is not None:
        keep = keep & extra_keep
    return Labels(winner, loser, gap, keep)


def kept_stats(groups: int, kept: int) -> dict:
    """The rollout statistics of its pair filter."""
    return {"groups": groups, "pairs": kept, "pairs_kept_fraction": kept / groups if groups else float("nan")}
