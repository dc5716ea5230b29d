"""What both the dispatch (``kernels/__init__.py``) and torch.compile's custom ops (``custom_ops.py``) need: the
Triton kernel modules, imported once, and the loss-argument checks. Kept here so that neither of the two imports the
other for it (the dispatch imports ``custom_ops`` to register its ops)."""

from __future__ import annotations

import functools
import importlib
import logging
from typing import Optional

from rdpo_zoo import losses as _losses

logger = logging.getLogger("rdpo_zoo.kernels")

_modules: Optional[tuple] = None
#: why Triton cannot be imported here (``None``: it can, or it has not been tried yet)
triton_error: Optional[BaseException] = None


def load_triton():
    """``(log_ratio, fused_loss, lean)`` kernel modules, imported once; ``None`` (and the reason kept in
    ``triton_error``) if Triton cannot be imported. Callers reach it as ``loader.load_triton()``, so a test that
    replaces it simulates a missing Triton everywhere at once."""
    global _modules, triton_error
    if _modules is None and triton_error is None:
        try:
            modules = (
                importlib.import_module("rdpo_zoo.kernels.log_ratio"),
                importlib.import_module("rdpo_zoo.kernels.fused_loss"),
            )
        except ImportError as error:  # triton missing, or a broken install
            triton_error = error
        else:
            try:  # the lean path is an optimisation: a Triton it cannot work with still runs the kernels
                lean = importlib.import_module("rdpo_zoo.kernels.lean")
            except Exception as error:  # noqa: BLE001
                logger.warning("rdpo_zoo.kernels: the lean launch path is off (%s: %s); every call takes the "
                               "general path", type(error).__name__, error)
                lean = None
            _modules = (*modules, lean)
    return _modules


def check_loss_arguments(loss, beta, penalty, psi_lambda, placement, clamp_eps):
    """The reference's own checks, in the reference's order (so the errors are the same)."""
    loss_obj, penalty_obj = _losses.resolve_loss(loss, penalty)
    beta = _losses._check_number("beta", beta, 0.0, strict=True)
    psi_lambda = _losses._check_number("psi_lambda", psi_lambda, 0.0)
    _losses.check_placement(placement)
    _losses.check_clamp_eps(clamp_eps)
    return loss_obj, penalty_obj, beta, psi_lambda


_check_loss_arguments_cached = functools.lru_cache(maxsize=256, typed=True)(check_loss_arguments)


def validate_loss_arguments(loss, beta, penalty, psi_lambda, placement, clamp_eps):
    """``check_loss_arguments``, remembered for arguments seen before (a training loop repeats them; the checks
    cost ~20 µs of CPU tensor work). ``typed``: ``True`` is not ``1``. Errors are never cached."""
    try:
        return _check_loss_arguments_cached(loss, beta, penalty, psi_lambda, placement, clamp_eps)
    except TypeError as error:
        if "unhashable" not in str(error):
            raise
        return check_loss_arguments(loss, beta, penalty, psi_lambda, placement, clamp_eps)


#: ``preference_loss``'s loss keywords and their defaults: left as they are when an ``objective=`` is given
LOSS_KEYWORD_DEFAULTS = {"loss": "dpo", "beta": 0.1, "penalty": None, "psi_lambda": 0.0, "placement": "inside",
                         "clamp_eps": None}


def objective_arguments(objective, given: dict, options: dict):
    """``(loss_obj, penalty_obj, beta, psi_lambda, placement, clamp_eps, options)`` of a resolved
    ``rdpo_zoo.resolve.Objective``, whose values were checked when it was built: nothing is checked again but that
    it is one, that its loss is pairwise and that no loss keyword (``given``: name -> value) or option comes beside
    it."""
    from rdpo_zoo.resolve import Objective

    if not isinstance(objective, Objective):
        raise TypeError(f"objective: expected an rdpo_zoo.Objective (rdpo_zoo.build_loss), got "
                        f"{type(objective).__name__}")
    beside = [name for name, value in given.items() if value is not LOSS_KEYWORD_DEFAULTS[name]
              and value != LOSS_KEYWORD_DEFAULTS[name]] + sorted(options)
    if beside:
        raise ValueError(f"objective: given with {', '.join(beside)}; the Objective holds the loss's settings, so "
                         "pass either objective= or the loss keywords, not both")
    if not isinstance(objective.loss, _losses.PairwiseLoss):
        raise TypeError(f"objective: its loss {objective.loss_name!r} is a {type(objective.loss).__name__}, not a "
                        "pairwise loss (a per-sample policy-gradient loss has no preference loss over pairs)")
    return (objective.loss, objective.penalty, objective.beta, objective.psi_lambda, objective.placement,
            objective.clamp_eps, dict(objective.options))
