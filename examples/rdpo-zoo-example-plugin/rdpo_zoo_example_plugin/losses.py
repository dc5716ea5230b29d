"""DPO with a target margin γ: the loss keeps pushing until the margin exceeds γ (ODPO / SimPO's γ)."""

import torch
import torch.nn.functional as F

from rdpo_zoo.losses import LossInputs, PairwiseLoss


def dpo_margin_loss(inputs: LossInputs) -> torch.Tensor:
    """Per-pair loss ``−log σ(z − γ)``, computed as ``softplus(γ − z)``; ``z`` is the engine's margin
    β(r_w − r_l) − λ·penalty. With γ = 0 it is DPO."""
    gamma = inputs.options.get("margin", 0.5)
    return F.softplus(gamma - inputs.margin)


dpo_margin = PairwiseLoss("dpo-margin", dpo_margin_loss, "DPO with a target margin γ")
