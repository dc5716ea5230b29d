"""Resolving a method: a preset merged with explicit settings (:func:`merge_settings`), and a loss with its penalty
typed into the callable :class:`Objective` (:func:`build_loss`). Both ask the registry for parts by name; they sit
above it (``parts`` ← ``registry`` ← ``resolve``), so that neither imports the other's importer. No torch here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from rdpo_zoo.loss_names import second_penalty
from rdpo_zoo.parts import PART_SETTINGS, SETTINGS, LossPart, OptionError, Part, PenaltyPart, Preset, _check_settings
from rdpo_zoo.registry import Registry, get_registry

__all__ = ["Objective", "build_loss", "merge_settings"]


# ------------------------------------------------------------------------------------------------- the loss

@dataclass(frozen=True)
class Objective:
    """A loss with its penalty and every option typed, ready to call: ``objective(log_ratios) -> [P]`` is
    ``rdpo_zoo.losses.pairwise_losses(log_ratios, **objective.kwargs())``.

    ``loss`` and ``penalty`` are the formulas (``PairwiseLoss``, ``Penalty``); ``options`` the loss's own options
    (they reach the formula as ``LossInputs.options``); ``fused`` the kernel forms ``(loss, penalty)`` when both
    have one, else ``None`` (then the PyTorch form is the only one).

    Its values are checked once, when it is built (β > 0, λ ≥ 0, the placement, the clamp's ε, the penalty's
    type), with ``rdpo_zoo.losses``' own checks and errors; ``rdpo_zoo.kernels.preference_loss(..., objective=obj)``
    then takes it as it is, with no second check.
    """

    loss_name: str
    loss: Any
    beta: float
    clamp_eps: Optional[float] = None
    options: Mapping[str, Any] = field(default_factory=dict)
    penalty_name: Optional[str] = None
    penalty: Any = None
    psi_lambda: float = 0.0
    placement: str = "inside"

    def __post_init__(self):
        from rdpo_zoo import losses

        # the checks of rdpo_zoo.losses.pairwise_losses, in its order, so that the errors are the same
        if self.penalty is not None and not isinstance(self.penalty, losses.Penalty):
            raise TypeError(f"penalty: expected an rdpo_zoo.losses.Penalty or None, got {type(self.penalty).__name__}")
        object.__setattr__(self, "beta", losses._check_number("beta", self.beta, 0.0, strict=True))
        object.__setattr__(self, "psi_lambda", losses._check_number("psi_lambda", self.psi_lambda, 0.0))
        losses.check_placement(self.placement)
        losses.check_clamp_eps(self.clamp_eps)

    @property
    def fused(self) -> Optional[tuple]:
        loss_fused = getattr(self.loss, "fused", None)  # a policy-gradient loss has no fused form at all
        if loss_fused is None or (self.penalty is not None and getattr(self.penalty, "fused", None) is None):
            return None
        return (loss_fused, None if self.penalty is None else self.penalty.fused)

    def kwargs(self) -> dict:
        """Keyword arguments of ``rdpo_zoo.losses.pairwise_losses`` / ``preference_loss``."""
        return dict(
            loss=self.loss,
            beta=self.beta,
            penalty=self.penalty,
            psi_lambda=self.psi_lambda,
            placement=self.placement,
            clamp_eps=self.clamp_eps,
            **self.options,
        )

    def __call__(self, log_ratios):
        """Per-pair losses ``[P]`` of log-ratios ``[P, 2]`` (column 0 preferred)."""
        from rdpo_zoo.losses import pairwise_losses

        return pairwise_losses(log_ratios, **self.kwargs())

    def mean(self, log_ratios):
        """The batch loss: the mean over pairs."""
        return self(log_ratios).mean()


def build_loss(
    loss: Union[str, LossPart] = "dpo",
    loss_options=None,
    penalty: Union[str, PenaltyPart, None] = None,
    penalty_options=None,
    registry: Optional[Registry] = None,
) -> Objective:
    """Look up a loss (and a penalty) by name, type their options, and return the :class:`Objective`.

    ``loss_options``/``penalty_options``: mappings (strings from ``--loss-opt``, or typed values) or lists of
    ``KEY=VALUE`` strings. A loss that includes a penalty (``rdpo`` = dpo + psi) refuses a second one.
    """
    registry = registry or get_registry()
    loss_part = registry.get("loss", loss) if isinstance(loss, str) else loss
    if not isinstance(loss_part, LossPart):
        raise TypeError(f"loss: expected a loss name or an rdpo_zoo.LossPart, got {type(loss).__name__}")
    if loss_part.penalty is not None:
        message = second_penalty(loss_part.name, loss_part.penalty, getattr(penalty, "name", penalty),
                                 instead=f"use a loss without one, e.g. 'dpo', with the penalty you want, or "
                                         f"{loss_part.name!r} alone")
        if message is not None:
            raise OptionError(message)
        penalty = loss_part.penalty
    typed = loss_part.parse_options(loss_options)
    beta, clamp_eps = typed.pop("beta"), typed.pop("clamp_eps")
    objective = dict(loss_name=loss_part.name, loss=loss_part.load(), beta=beta, clamp_eps=clamp_eps, options=typed)
    if penalty is None:
        if penalty_options:
            raise OptionError("penalty_options: given without a penalty (choose one, e.g. penalty 'psi')")
        return Objective(**objective)
    penalty_part = registry.get("penalty", penalty) if isinstance(penalty, str) else penalty
    if not isinstance(penalty_part, PenaltyPart):
        raise TypeError(f"penalty: expected a penalty name or an rdpo_zoo.PenaltyPart, got {type(penalty).__name__}")
    formula, options = penalty_part.build(penalty_options)
    return Objective(
        **objective,
        penalty_name=penalty_part.name,
        penalty=formula,
        psi_lambda=options["lambda"],
        placement=options["placement"],
    )


# ------------------------------------------------------------------------------------------------- presets


def merge_settings(
    preset: Union[str, Preset, Mapping, None] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    registry: Optional[Registry] = None,
    check_parts: bool = True,
) -> dict:
    """The run's settings: the defaults of ``rdpo_zoo.parts.SETTINGS``, then the preset's, then ``overrides``
    (explicit flags). Returns every setting, typed.

    Rules:

    - a top-level override of ``None`` means "not given" and leaves the preset's value; to remove a part, give
      the string ``"none"`` (``--penalty none``);
    - ``*_options`` dictionaries merge key by key (``--loss-opt beta=0.2`` keeps the preset's ``clamp_eps``);
    - when an override names another part than the preset (``--loss ipo`` over ``d3po``), the preset's options for
      that part are kept only where the new part declares an option of that name (β and ``clamp_eps`` are
      common to every loss; a loss-specific option is dropped);
    - with ``check_parts`` (the default) the estimator, loss and penalty are looked up in the registry and their
      options typed and filled with defaults, so a typo fails here, naming the option.
    """
    def lookup(kind: str, name: str) -> Part:  # the setting's name is the kind's: estimator, loss, penalty
        return (registry or get_registry()).get(kind, name)

    if isinstance(preset, str):
        preset = lookup("preset", preset)
    if isinstance(preset, Preset):
        base, where = dict(preset.settings), f"preset {preset.name!r}"
    else:
        base, where = _check_settings(preset or {}, "preset"), "preset"
    settings = {o.name: (dict(o.default) if isinstance(o.default, dict) else o.default) for o in SETTINGS}
    settings.update({k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()})
    given = _check_settings({k: v for k, v in (overrides or {}).items() if v is not None}, "overrides")
    for kind, options_key in PART_SETTINGS.items():
        if kind in given and given[kind] != settings[kind] and settings[options_key]:
            # another part than the preset's: keep the preset's options that the new part also has
            kept = {}
            if check_parts and given[kind] is not None:
                declared = {o.name for o in lookup(kind, given[kind]).all_options}
                kept = {k: v for k, v in settings[options_key].items() if k in declared}
            settings[options_key] = kept
    for key, value in given.items():
        settings[key] = {**settings[key], **value} if key in PART_SETTINGS.values() else value
    if check_parts and "loss" in given and "penalty" not in given and settings["loss"] and settings["penalty"]:
        # `--preset rdpo --loss rdpo`: the preset's penalty is the one the new loss includes; its options now tune
        # that included penalty (the same method), rather than being refused as counted twice
        if lookup("loss", settings["loss"]).penalty == settings["penalty"]:
            settings["penalty"] = None
    for kind, options_key in PART_SETTINGS.items():
        if settings[kind] is None:
            implied = _implied_penalty(settings, lookup) if kind == "penalty" and check_parts else None
            if implied is not None:  # loss rdpo includes psi: --penalty-opt / --psi-lambda tune that penalty
                settings[options_key] = lookup("penalty", implied).parse_options(settings[options_key])
            elif settings[options_key]:
                raise OptionError(f"{options_key}: given, but no {kind} is chosen ({where})")
        elif check_parts:
            settings[options_key] = lookup(kind, settings[kind]).parse_options(settings[options_key])
    if check_parts and settings["loss"] is not None and settings["penalty"] is not None:
        loss = lookup("loss", settings["loss"])
        message = second_penalty(loss.name, loss.penalty, settings["penalty"],
                                 where="given" if "penalty" in given else "from " + where,
                                 instead="--penalty none drops it")
        if message is not None:
            raise OptionError(message)
    return settings


def _implied_penalty(settings, lookup) -> Optional[str]:
    """The penalty the chosen loss always includes (``rdpo`` → ``psi``), or ``None``."""
    return None if settings["loss"] is None else lookup("loss", settings["loss"]).penalty
