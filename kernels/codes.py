"""The fused loss codes: the integers the two epilogues switch on (the Triton one in ``fused_loss.py``, the PyTorch
one of ``custom_ops.py``, ``torch.compile``'s path), and how a loss and a penalty map to them. One table, read by
both; a fused form is added here and in those two epilogues (and named by ``fused=`` on its part). No torch here."""

from __future__ import annotations

from typing import Optional

__all__ = ["FUSED_LOSSES", "FUSED_PENALTIES", "LOSS_NAMES", "PENALTY_NAMES", "fused_codes"]

#: a loss's ``fused`` name -> the epilogue's LOSS code
FUSED_LOSSES = {"dpo": 1, "ipo": 2, "hinge": 3}
#: a penalty's ``fused`` name -> the epilogue's PENALTY code (0: no penalty)
FUSED_PENALTIES = {"psi": 1, "psi-literal": 2, "dpop": 3}
#: the codes back to the names (the PyTorch epilogue computes the loss by name)
LOSS_NAMES = {code: name for name, code in FUSED_LOSSES.items()}
PENALTY_NAMES = {0: None, **{code: name for name, code in FUSED_PENALTIES.items()}}


def fused_codes(loss_obj, penalty_obj) -> tuple[Optional[int], Optional[int], Optional[str]]:
    """``(loss_code, penalty_code, reason)``: the epilogue's codes, or ``reason`` why there is no fused form."""
    loss_code = FUSED_LOSSES.get(loss_obj.fused) if loss_obj.fused else None
    if loss_code is None:
        return None, None, f"loss {loss_obj.name!r} has no fused form (fused={loss_obj.fused!r})"
    if penalty_obj is None:
        return loss_code, 0, None
    penalty_code = FUSED_PENALTIES.get(penalty_obj.fused) if penalty_obj.fused else None
    if penalty_code is None:
        return None, None, f"penalty {penalty_obj.name!r} has no fused form (fused={penalty_obj.fused!r})"
    return loss_code, penalty_code, None
