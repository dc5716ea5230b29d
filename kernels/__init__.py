"""The hot path: fused paired log-ratios and preference loss, with dispatch between Triton and the reference.

    r = paired_log_ratios(y, x_t, o_theta, o_ref, a, b, sigma)                     # [P, 2], column 0 preferred
    loss, r = preference_loss(y, x_t, o_theta, o_ref, a, b, sigma, loss="rdpo", beta=0.1, psi_lambda=1.0,
                              return_log_ratios=True)                               # r detached, for metrics

Both take the arguments of ``rdpo_zoo.reference.paired_log_ratios`` (validated by the same
``check_paired_inputs``, so a bad input raises the same error) plus ``backend``:

- ``None`` (default): CUDA tensors run the Triton kernels; anything else runs the reference. If Triton cannot run
  (not installed, or the step coefficients ask for gradients, which the kernels do not compute) the reference runs
  instead, and says so at debug level on the ``rdpo_zoo.kernels`` logger.
- ``"triton"``: the kernels, or a clear ``RuntimeError`` where they cannot run (CPU tensors need
  ``TRITON_INTERPRET=1`` in the environment before the first call: that is how the tests run them).
- ``"reference"``: ``rdpo_zoo.reference`` + ``rdpo_zoo.losses``, plain PyTorch, any device.

Eager calls with the coefficients as numbers or CPU tensors take the lean launch path (``lean.py``: launch plans,
compiled-kernel launches, no device sync; ``use_lean_path(False)`` switches it off); under ``torch.compile`` the
calls are the ``rdpo_zoo::`` custom ops of ``custom_ops.py`` (``fullgraph=True`` works).

This package imports torch and the reference maths only; Triton is imported on first use, so it imports (and the
reference backend works) without Triton, diffusers, peft or transformers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Optional

import torch

from rdpo_zoo import losses as _losses
from rdpo_zoo.kernels import custom_ops as _custom_ops  # registers rdpo_zoo::* (torch.compile's path)
from rdpo_zoo.kernels import loader as _loader  # the kernel modules, imported once; the loss-argument checks
from rdpo_zoo.reference import DEFAULT_MIN_SIGMA, check_paired_inputs
from rdpo_zoo.reference import paired_log_ratios as _reference_log_ratios

__all__ = [
    "BACKENDS",
    "FUSED_LOSSES",
    "FUSED_PENALTIES",
    "paired_log_ratios",
    "preference_loss",
    "fused_loss_path",
    "triton_status",
    "select_backend",
    "use_lean_path",
]

logger = logging.getLogger(__name__)
BACKENDS = ("triton", "reference")
#: ``PairwiseLoss.fused`` / ``Penalty.fused`` names the loss epilogue kernel computes, and their compile-time codes
#: (kept in ``codes.py``, beside the epilogues that read them)
from rdpo_zoo.kernels.codes import FUSED_LOSSES, FUSED_PENALTIES  # noqa: E402 (the epilogues' codes)
from rdpo_zoo.kernels.codes import fused_codes as _fused_codes  # noqa: E402
def triton_status() -> dict:
    """Whether the Triton kernels can be used here: ``{"available", "interpreted", "version", "error"}``."""
    modules = _loader.load_triton()
    error = _loader.triton_error
    version = None
    if modules is not None:
        import triton

        version = triton.__version__
    return {
        "available": modules is not None,
        "interpreted": bool(modules is not None and modules[0].is_interpreted()),
        "version": version,
        "error": None if error is None else f"{type(error).__name__}: {error}",
    }


def _coefficients_need_grad(*values) -> Optional[str]:
    for name, value in zip(("a", "b", "sigma"), values):
        if isinstance(value, torch.Tensor) and value.requires_grad and torch.is_grad_enabled():
            return name
    return None


def select_backend(backend: Optional[str], device: torch.device, coefficient_grad: Optional[str] = None) -> str:
    """The backend that runs tensors on ``device``; raises ``ValueError``/``RuntimeError`` for an explicit choice
    that cannot run. ``coefficient_grad`` names a step coefficient that requires grad (the kernels give none)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend: expected None, 'triton' or 'reference', got {backend!r}")
    if backend == "reference":
        return "reference"
    modules = _loader.load_triton()
    if backend == "triton":
        if modules is None:
            raise RuntimeError(
                f"backend='triton': Triton cannot be imported "
                f"({type(_loader.triton_error).__name__}: {_loader.triton_error}); "
                "install triton (Linux with a CUDA GPU) or use backend='reference'"
            )
        if device.type != "cuda" and not modules[0].runs_cpu_tensors():
            raise RuntimeError(
                f"backend='triton': the tensors are on {device}, and Triton runs on a CUDA GPU; on the CPU it runs "
                "only through its interpreter, which must be switched on (TRITON_INTERPRET=1 in the environment) "
                "before the kernels are first used; or use backend='reference'"
            )
        if coefficient_grad is not None:
            raise RuntimeError(
                f"backend='triton': {coefficient_grad} requires grad, and the fused kernels compute no gradient "
                "with respect to the step coefficients a, b, sigma (detach them, or use backend='reference')"
            )
        return "triton"
    if device.type != "cuda":
        return "reference"
    if modules is None:
        logger.debug("rdpo_zoo.kernels: Triton unavailable (%s); running the reference on %s", _loader.triton_error,
                     device)
        return "reference"
    if coefficient_grad is not None:
        logger.debug("rdpo_zoo.kernels: %s requires grad; running the reference (the kernels do not "
                     "differentiate the step coefficients)", coefficient_grad)
        return "reference"
    return "triton"


class use_lean_path:
    """Switch the lean launch path (``kernels/lean.py``) on or off, globally, or for a ``with`` block:
    ``with use_lean_path(False): ...`` runs every call through the general path (``rdpo-zoo bench --host`` times
    both). On by default."""

    def __init__(self, enabled: bool = True):
        modules = _loader.load_triton()
        self._flag = modules[2].ENABLED if modules is not None and modules[2] is not None else {"on": False}
        self._saved = self._flag["on"]
        self._flag["on"] = bool(enabled)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._flag["on"] = self._saved
        return False


def _lean():
    """The lean-path module when Triton is importable, else ``None`` (cheap after the first call)."""
    modules = _loader.load_triton()
    return None if modules is None else modules[2]


def _kernel_spec(spec):
    # The kernels index the [P] coefficients contiguously and never differentiate them.
    return replace(spec, a=spec.a.detach().contiguous(), b=spec.b.detach().contiguous(),
                   sigma=spec.sigma.detach().contiguous())


def paired_log_ratios(
    y: torch.Tensor,
    x_t: Optional[torch.Tensor],
    o_theta: torch.Tensor,
    o_ref: torch.Tensor,
    a,
    b,
    sigma,
    reduction: str = "mean",
    min_sigma: float = DEFAULT_MIN_SIGMA,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Policy/reference log-ratios ``[P, 2]`` of both branches of each pair (column 0 = preferred): the fused
    form of ``rdpo_zoo.reference.paired_log_ratios`` (same arguments and errors), with autograd to every input
    that requires grad. fp32 result (fp64 if an input is fp64) from fp32/bf16/fp16 inputs, mixed as you like."""
    if torch.compiler.is_compiling():
        return _custom_ops.paired_log_ratios_compiled(y, x_t, o_theta, o_ref, a, b, sigma, reduction, min_sigma)
    lean = _lean()
    if lean is not None:
        out = lean.try_paired_log_ratios(y, x_t, o_theta, o_ref, a, b, sigma, reduction, min_sigma, backend)
        if out is not NotImplemented:
            return out
    spec = check_paired_inputs(y, x_t, o_theta, o_ref, a, b, sigma, reduction, min_sigma)
    chosen = select_backend(backend, spec.device, _coefficients_need_grad(a, b, sigma))
    if chosen == "reference":
        return _reference_log_ratios(y, x_t, o_theta, o_ref, a, b, sigma, reduction, min_sigma)
    log_ratio, _, _ = _loader.load_triton()
    return log_ratio.paired_log_ratios_triton(y, x_t, o_theta, o_ref, _kernel_spec(spec), reduction)


def fused_loss_path(loss="dpo", penalty=None) -> str:
    """How the Triton backend computes this loss: ``"fused"`` (in the epilogue kernel), or
    ``"fallback: <why>"`` (the reference loss on top of the fused log-ratios)."""
    loss_obj, penalty_obj = _losses.resolve_loss(loss, penalty)
    _, _, reason = _fused_codes(loss_obj, penalty_obj)
    return "fused" if reason is None else f"fallback: {reason}; the reference loss runs on the fused log-ratios"


def preference_loss(
    y: torch.Tensor,
    x_t: Optional[torch.Tensor],
    o_theta: torch.Tensor,
    o_ref: torch.Tensor,
    a,
    b,
    sigma,
    loss="dpo",
    beta: float = 0.1,
    penalty=None,
    psi_lambda: float = 0.0,
    placement: str = "inside",
    clamp_eps: Optional[float] = None,
    reduction: str = "mean",
    min_sigma: float = DEFAULT_MIN_SIGMA,
    backend: Optional[str] = None,
    return_log_ratios: bool = False,
    objective=None,
    **options: float,
):
    """The batch preference loss over pairs: ``rdpo_zoo.losses.preference_loss`` applied to
    ``rdpo_zoo.reference.paired_log_ratios`` (same arguments, same errors), fused.

    The loss is given either by its keywords (``loss``, ``beta``, ``penalty``, ``psi_lambda``, ``placement``,
    ``clamp_eps``, ``**options``: checked here, as the reference checks them) or as ``objective=``, a resolved
    ``rdpo_zoo.Objective`` (``rdpo_zoo.build_loss``; the trainer passes its own), whose values were checked when it
    was built and are taken as they are (the loss keywords then stay at their defaults).

    With ``return_log_ratios=True`` returns ``(loss, r)``, ``r`` the detached ``[P, 2]`` log-ratios (for metrics).
    On Triton, a loss or penalty without a fused form (``fused=None``, e.g. a third-party plugin's) runs the
    reference loss on top of the fused log-ratios, and says so at debug level (``fused_loss_path`` tells ahead).

    Eager calls with the coefficients as numbers or CPU tensors take the lean launch path (``kernels/lean.py``);
    under ``torch.compile`` the call is the custom op ``rdpo_zoo::fused_preference_loss`` (``kernels/custom_ops.py``).
    """
    resolved = objective is not None
    if resolved:
        loss, penalty, beta, psi_lambda, placement, clamp_eps, options = _loader.objective_arguments(
            objective, dict(loss=loss, beta=beta, penalty=penalty, psi_lambda=psi_lambda, placement=placement,
                            clamp_eps=clamp_eps), options)
    if torch.compiler.is_compiling():  # the custom op takes plain arguments (and checks them where it runs)
        return _custom_ops.preference_loss_compiled(
            y, x_t, o_theta, o_ref, a, b, sigma, loss, beta, penalty, psi_lambda, placement, clamp_eps, reduction,
            min_sigma, return_log_ratios, options)
    lean = _lean()
    if lean is not None:
        out = lean.try_preference_loss(y, x_t, o_theta, o_ref, a, b, sigma, loss, beta, penalty, psi_lambda,
                                       placement, clamp_eps, reduction, min_sigma, backend, return_log_ratios, options,
                                       resolved)
        if out is not NotImplemented:
            return out
    spec = check_paired_inputs(y, x_t, o_theta, o_ref, a, b, sigma, reduction, min_sigma)
    if resolved:
        loss_obj, penalty_obj = loss, penalty
    else:
        loss_obj, penalty_obj, beta, psi_lambda = _loader.validate_loss_arguments(
            loss, beta, penalty, psi_lambda, placement, clamp_eps
        )
    chosen = select_backend(backend, spec.device, _coefficients_need_grad(a, b, sigma))
    if chosen == "triton":
        loss_code, penalty_code, reason = _fused_codes(loss_obj, penalty_obj)
        if reason is None:
            _, kernel_losses, _ = _loader.load_triton()
            bounds = None if clamp_eps is None else (math.log1p(-clamp_eps), math.log1p(clamp_eps))
            value, r = kernel_losses.preference_loss_triton(
                y, x_t, o_theta, o_ref, _kernel_spec(spec), reduction, loss_code, penalty_code,
                placement == "inside", beta, psi_lambda, bounds,
            )
            return (value, r) if return_log_ratios else value
        logger.debug("rdpo_zoo.kernels.preference_loss: %s; the reference loss runs on the fused log-ratios", reason)
        log_ratio, _, _ = _loader.load_triton()
        log_ratios = log_ratio.paired_log_ratios_triton(y, x_t, o_theta, o_ref, _kernel_spec(spec), reduction)
    else:
        log_ratios = _reference_log_ratios(y, x_t, o_theta, o_ref, a, b, sigma, reduction, min_sigma)
    if resolved:
        value = _losses.resolved_pairwise_losses(log_ratios, loss_obj, beta, penalty_obj, psi_lambda, placement,
                                                 clamp_eps, options).mean()
    else:
        value = _losses.preference_loss(log_ratios, loss_obj, beta, penalty=penalty_obj, psi_lambda=psi_lambda,
                                        placement=placement, clamp_eps=clamp_eps, **options)
    return (value, log_ratios.detach()) if return_log_ratios else value
