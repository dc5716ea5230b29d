"""Preference losses over paired log-ratios, and the Ψ penalty of RDPO: the reference formulas.

Every pairwise loss here is a function of the pair's *margin*

    z = β·(r_w − r_l) − λ·penalty(r_w, r_l)          (penalty "inside", the paper's placement)

with ``r_w``, ``r_l`` the (optionally clamped) policy/reference log-ratios of the preferred and the
dispreferred branch. The batch loss is the mean over pairs. The ``rdpo_zoo.kernels`` fused op computes the same
formulas on the GPU and is tested against these.

Ψ, the RDPO penalty (Eq. 9–10 of "Rethinking DPO-style Diffusion Aligning Frameworks"). The paper prints
``Ψ = min(0, log π_ref(x_l)/π_θ(x_l)) = −max(0, r_l)`` and the loss ``−log σ(δ − λΨ)``: taken literally,
``z = δ + λ·max(0, r_l)``, which *rewards* a rising dispreferred likelihood, the opposite of what the text says Ψ
is for ("keep the dispreferred likelihood low"). The default ``psi`` is the intended form,
``z = δ − λ·max(0, r_l)`` (like DPOP's penalty, on the loser); ``psi-literal`` keeps the printed form, for the
record. λ is not multiplied by β (the paper writes δ − λΨ with δ = β(…)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import torch
import torch.nn.functional as F

from rdpo_zoo.loss_names import LOSS_NAMES, PENALTY_NAMES, second_penalty

__all__ = [
    "LossInputs",
    "PairwiseLoss",
    "Penalty",
    "PAIRWISE_LOSSES",
    "PENALTIES",
    "PLACEMENTS",
    "LOSS_ALIASES",
    "resolve_loss",
    "clamp_log_ratios",
    "preference_margin",
    "pairwise_losses",
    "preference_loss",
    "dpo_loss",
    "ipo_loss",
    "hinge_loss",
    "psi_penalty",
    "psi_literal_penalty",
    "dpop_penalty",
    "PolicyGradientLoss",
    "POLICY_GRADIENT_LOSSES",
    "ppo_clip_loss",
    "grpo_loss",
]


@dataclass(frozen=True)
class LossInputs:
    """What a pairwise loss sees: per-pair tensors ``[P]`` and its scalar options."""

    margin: torch.Tensor  # z = β(r_w − r_l) − λ·penalty (penalty inside), or β(r_w − r_l) (outside / none)
    r_w: torch.Tensor  # preferred log-ratio, after the optional clamp
    r_l: torch.Tensor  # dispreferred log-ratio, after the optional clamp
    beta: float
    options: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PairwiseLoss:
    """A loss formula: ``fn(LossInputs) -> [P]`` per-pair losses. ``fused`` names its kernel form, if any."""

    name: str
    fn: Callable[[LossInputs], torch.Tensor]
    description: str
    fused: Optional[str] = None


@dataclass(frozen=True)
class Penalty:
    """A penalty term ``fn(r_w, r_l) -> [P]``, weighted by λ: subtracted from the margin, or added to the loss."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    description: str
    fused: Optional[str] = None


def dpo_loss(inputs: LossInputs) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, Eq. 7) per denoising step as D3PO (Yang et al. 2024, Eq. 4) applies it:
    ``−log σ(z)``, computed as ``softplus(−z)`` so that it neither overflows nor loses precision at large |z|."""
    return F.softplus(-inputs.margin)


def ipo_loss(inputs: LossInputs) -> torch.Tensor:
    """IPO (Azar et al. 2023, Eq. 17, as trl writes it): ``(z/β − 1/(2β))²`` = ``((r_w − r_l) − 1/(2β))²``
    without a penalty. β is IPO's τ: the target log-ratio gap is 1/(2β)."""
    beta = inputs.beta
    return (inputs.margin / beta - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(inputs: LossInputs) -> torch.Tensor:
    """Hinge / SLiC (Zhao et al. 2023): ``max(0, 1 − z)``."""
    return torch.relu(1.0 - inputs.margin)


def psi_penalty(r_w: torch.Tensor, r_l: torch.Tensor) -> torch.Tensor:
    """RDPO's Ψ in its intended form: ``max(0, r_l)``, so that ``z = δ − λ·max(0, r_l)`` pushes r_l down while
    it is positive (∂L/∂r_l gains λ·σ(−z) there)."""
    return torch.relu(r_l)


def psi_literal_penalty(r_w: torch.Tensor, r_l: torch.Tensor) -> torch.Tensor:
    """Ψ exactly as the RDPO paper prints it, ``min(0, log π_ref/π_θ(x_l)) = −max(0, r_l)``; with ``δ − λΨ`` it
    rewards a rising dispreferred likelihood. Kept for the record and for ablations, not as a default."""
    return -torch.relu(r_l)


def dpop_penalty(r_w: torch.Tensor, r_l: torch.Tensor) -> torch.Tensor:
    """DPOP / Smaug (Pal et al. 2024): ``max(0, −r_w)``, keeping the preferred likelihood from falling below
    the reference's."""
    return torch.relu(-r_w)


# names, descriptions and fused forms: the one table of rdpo_zoo.loss_names; the formulas are here
PAIRWISE_LOSSES: dict[str, PairwiseLoss] = {
    name: PairwiseLoss(name, fn, LOSS_NAMES[name].description, fused=LOSS_NAMES[name].fused)
    for name, fn in (("dpo", dpo_loss), ("ipo", ipo_loss), ("hinge", hinge_loss))
}
PENALTIES: dict[str, Penalty] = {
    name: Penalty(name, fn, PENALTY_NAMES[name].description, fused=PENALTY_NAMES[name].fused)
    for name, fn in (("psi", psi_penalty), ("psi-literal", psi_literal_penalty), ("dpop", dpop_penalty))
}
#: Loss names that are a formula plus a fixed penalty. ``rdpo`` is ``dpo`` with ``psi``: one implementation.
LOSS_ALIASES: dict[str, tuple[str, Optional[str]]] = {
    entry.name: (entry.formula, entry.penalty) for entry in LOSS_NAMES.values() if entry.name != entry.formula}
PLACEMENTS = ("inside", "outside")


def _known(table) -> str:
    return ", ".join(sorted(table))


def resolve_loss(loss, penalty=None) -> tuple[PairwiseLoss, Optional[Penalty]]:
    """Turn names (or ready ``PairwiseLoss``/``Penalty`` objects) into formulas; ``rdpo`` means dpo + psi and
    refuses a second penalty."""
    if isinstance(loss, str):
        base, implied = LOSS_ALIASES.get(loss, (loss, None))
        if base not in PAIRWISE_LOSSES:
            known = _known(set(PAIRWISE_LOSSES) | set(LOSS_ALIASES))
            raise ValueError(f"loss: unknown loss {loss!r}; known losses: {known}")
        message = second_penalty(loss, implied, getattr(penalty, "name", penalty),
                                 instead=f"use loss='{base}' with penalty='{implied}', or loss={loss!r} alone")
        if message is not None:
            raise ValueError(message)
        loss_obj, penalty = PAIRWISE_LOSSES[base], penalty if implied is None else implied
    elif isinstance(loss, PairwiseLoss):
        loss_obj = loss
    else:
        raise TypeError(f"loss: expected a loss name or a PairwiseLoss, got {type(loss).__name__}")
    if penalty is None or isinstance(penalty, Penalty):
        return loss_obj, penalty
    if isinstance(penalty, str):
        if penalty not in PENALTIES:
            raise ValueError(f"penalty: unknown penalty {penalty!r}; known penalties: {_known(PENALTIES)}")
        return loss_obj, PENALTIES[penalty]
    raise TypeError(f"penalty: expected a penalty name, a Penalty or None, got {type(penalty).__name__}")


def _check_number(name: str, value, minimum: Optional[float] = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name}: expected a number {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


def clamp_log_ratios(r: torch.Tensor, clamp_eps: Optional[float]) -> torch.Tensor:
    """The public D3PO/SPO trust region: clamp each ratio exp(r) to [1 − ε, 1 + ε], i.e. r to
    [log(1 − ε), log(1 + ε)]; the gradient through a clamped term is 0. ``None`` leaves r as it is."""
    eps = check_clamp_eps(clamp_eps)
    if eps is None:
        return r
    return r.clamp(math.log1p(-eps), math.log1p(eps))


def check_clamp_eps(clamp_eps) -> Optional[float]:
    """The ratio clamp's ε as a float (``None``: no clamp); anything but a number in (0, 1) is refused."""
    if clamp_eps is None:
        return None
    eps = _check_number("clamp_eps", clamp_eps)
    if not 0 < eps < 1:
        raise ValueError(f"clamp_eps: expected 0 < ε < 1 (the ratio is clamped to [1 − ε, 1 + ε]), got {clamp_eps!r}")
    return eps


def check_placement(placement) -> None:
    if placement not in PLACEMENTS:
        raise ValueError(f"placement: expected one of {PLACEMENTS}, got {placement!r}")


def _check_log_ratios(r: torch.Tensor) -> None:
    if not isinstance(r, torch.Tensor):
        raise TypeError(f"log_ratios: expected a [P, 2] torch.Tensor, got {type(r).__name__}")
    if r.dim() != 2 or r.shape[1] != 2 or r.shape[0] < 1:
        raise ValueError(f"log_ratios: expected shape [P, 2] (column 0 preferred), got {tuple(r.shape)}")
    if not r.is_floating_point():
        raise TypeError(f"log_ratios: expected a floating tensor, got {r.dtype}")


def preference_margin(
    log_ratios: torch.Tensor,
    beta: float,
    penalty: Optional[Penalty] = None,
    psi_lambda: float = 0.0,
    placement: str = "inside",
    clamp_eps: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(z, r_w, r_l, penalty_value)``: the margin, the clamped log-ratios and the unweighted penalty.

    The penalty sees the *unclamped* log-ratios (the clamp is a trust region for the DPO term; Ψ must still see
    how far r_l has risen).
    """
    _check_log_ratios(log_ratios)
    check_placement(placement)
    clamped = clamp_log_ratios(log_ratios, clamp_eps)
    r_w, r_l = clamped[:, 0], clamped[:, 1]
    z = beta * (r_w - r_l)
    penalty_value = torch.zeros_like(z)
    if penalty is not None:
        penalty_value = penalty.fn(log_ratios[:, 0], log_ratios[:, 1])
        if placement == "inside":
            z = z - psi_lambda * penalty_value
    return z, r_w, r_l, penalty_value


def pairwise_losses(
    log_ratios: torch.Tensor,
    loss="dpo",
    beta: float = 0.1,
    penalty=None,
    psi_lambda: float = 0.0,
    placement: str = "inside",
    clamp_eps: Optional[float] = None,
    **options: float,
) -> torch.Tensor:
    """Per-pair losses ``[P]`` for log-ratios ``[P, 2]`` (column 0 = preferred).

    Args:
        loss: a name (``dpo``/``d3po``, ``ipo``, ``hinge``, ``rdpo`` = dpo + psi) or a ``PairwiseLoss``.
        beta: β, the inverse temperature on the log-ratio gap (> 0).
        penalty: ``None``, ``psi`` (RDPO's Ψ, intended sign), ``psi-literal`` (as printed), ``dpop``, or a
            ``Penalty``; any loss can take one (the RDPO paper's Table 3 adds Ψ to D3PO, SPO and TailorPO).
        psi_lambda: the penalty's weight λ (≥ 0), not multiplied by β.
        placement: ``inside`` the loss's margin (the paper's form, default) or ``outside``, added to the loss
            (the DPOP-style variant: ``L = f(β(r_w − r_l)) + λ·penalty``).
        clamp_eps: the D3PO/SPO ratio clamp ε (e.g. 0.1), or ``None``.
        options: extra numeric options passed to the loss formula.
    """
    loss_obj, penalty_obj = resolve_loss(loss, penalty)
    beta = _check_number("beta", beta, 0.0, strict=True)
    psi_lambda = _check_number("psi_lambda", psi_lambda, 0.0)
    return resolved_pairwise_losses(log_ratios, loss_obj, beta, penalty_obj, psi_lambda, placement, clamp_eps,
                                    options)


def resolved_pairwise_losses(log_ratios: torch.Tensor, loss_obj: PairwiseLoss, beta: float,
                             penalty_obj: Optional[Penalty], psi_lambda: float, placement: str,
                             clamp_eps: Optional[float], options: Mapping) -> torch.Tensor:
    """:func:`pairwise_losses` past its argument checks: the formulas already resolved and β, λ already checked
    floats (by ``pairwise_losses``, or when a ``rdpo_zoo.resolve.Objective`` was built)."""
    z, r_w, r_l, penalty_value = preference_margin(log_ratios, beta, penalty_obj, psi_lambda, placement, clamp_eps)
    per_pair = loss_obj.fn(LossInputs(z, r_w, r_l, beta, dict(options)))
    if penalty_obj is not None and placement == "outside":
        per_pair = per_pair + psi_lambda * penalty_value
    return per_pair


def preference_loss(log_ratios: torch.Tensor, loss="dpo", beta: float = 0.1, **kwargs) -> torch.Tensor:
    """The batch loss: the mean over pairs of :func:`pairwise_losses` (same arguments)."""
    return pairwise_losses(log_ratios, loss, beta, **kwargs).mean()


# ------------------------------------------------------------------------------------- policy-gradient losses


@dataclass(frozen=True)
class PolicyGradientLoss:
    """A per-sample loss over ``(log π_θ, log π_old, advantage)`` (DDPO, GRPO), not over pairs: the log-ratio is
    against the policy that *sampled* (its log-prob is stored at rollout), not against the reference.

    ``fn(log_prob, old_log_prob, advantages, **options) -> [N]``. A loss that also wants the step's KL to the
    reference (the same UNet with its adapter disabled) names it with ``reference_kl(options)``: the convention
    (``"exact"`` or ``"public"``, see ``rdpo_zoo.reference.step_kl``) for these options, or ``None`` for no KL
    (no reference pass); the trainer then passes the per-sample KL as ``fn(..., reference_kl=[N])``. The trainer takes
    the per-sample path for any loss of this type, built-in or a plugin's."""

    name: str
    fn: Callable[..., torch.Tensor]
    description: str
    reference_kl: Optional[Callable[[Mapping], Optional[str]]] = None


def ppo_clip_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                  clip_range: float = 1e-4) -> torch.Tensor:
    """DDPO's PPO-clip (Black et al. 2024; kvablack/ddpo-pytorch scripts/train.py), per sample:

        ratio = exp(log π_θ(y|x_t) − log π_old(y|x_t))
        L     = max(−A·ratio, −A·clamp(ratio, 1 − c, 1 + c))

    with the mean-reduced log-probabilities its clip range c = 1e-4 assumes. Returns ``[N]``."""
    c = _check_number("clip_range", clip_range, 0.0, strict=True)
    ratio = torch.exp(log_prob - old_log_prob)
    return torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1.0 - c, 1.0 + c))


def grpo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
              clip_range: float = 1e-4, adv_clip_max: float = 5.0, kl_beta: float = 0.0, kl: str = "public",
              reference_kl: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Flow-GRPO's loss (Liu et al. 2025; yifan123/flow_grpo scripts/train_sd3.py), per sample:

        A = clamp(advantage, ±adv_clip_max)                    (group-normalised by the estimator)
        L = max(−A·ratio, −A·clamp(ratio, 1 ± clip_range)) + β·KL(π_θ ‖ π_ref)

    the ratio against the sampler (:func:`ppo_clip_loss`), the KL to the reference in the convention ``kl`` names
    (``public``: Flow-GRPO's, |dt| times the ``exact`` one; ``rdpo_zoo.reference.step_kl``), passed in as
    ``reference_kl`` ``[N]`` when ``kl_beta`` > 0. The batch mean of this is the public policy_loss + β·kl_loss.
    Returns ``[N]``."""
    from rdpo_zoo.reference import KL_CONVENTIONS

    clip = _check_number("adv_clip_max", adv_clip_max, 0.0, strict=True)
    beta = _check_number("kl_beta", kl_beta, 0.0)
    if kl not in KL_CONVENTIONS:
        raise ValueError(f"kl: expected one of {KL_CONVENTIONS}, got {kl!r}")
    loss = ppo_clip_loss(log_prob, old_log_prob, advantages.clamp(-clip, clip), clip_range)
    if beta > 0:
        if reference_kl is None:
            raise ValueError("reference_kl: grpo with kl_beta > 0 needs each sample's step KL to the reference")
        loss = loss + beta * reference_kl
    return loss


def _grpo_reference_kl(options: Mapping) -> Optional[str]:
    return options.get("kl", "public") if options.get("kl_beta", 0.0) > 0 else None


POLICY_GRADIENT_LOSSES: dict[str, PolicyGradientLoss] = {
    "ppo-clip": PolicyGradientLoss("ppo-clip", ppo_clip_loss, "DDPO: PPO-clip on the step ratio against the sampler"),
    "grpo": PolicyGradientLoss("grpo", grpo_loss, "Flow-GRPO: PPO-clip on group-normalised advantages + β·KL to the "
                               "reference", reference_kl=_grpo_reference_kl),
}
