"""What a plugin hands over: parts, their typed options, and presets. Plain data; no torch here.

A *part* is one named, swappable piece of the engine: an estimator, a loss, a penalty (Ψ), a reward, a model,
or a preset (a named combination of settings). Every part has

- ``kind`` (fixed by its class) and a ``name``, unique within its kind;
- a one-line ``description``;
- typed ``options`` (:class:`Option`): name, type, default, help, and where useful choices and bounds. They are
  plain data, so the command line builds ``--loss-opt beta=0.1`` and its help from them without importing
  torch, diffusers or peft;
- a lazy ``factory``: a ``"package.module:attribute"`` string (imported only when the part is built) or a
  callable that imports what it needs inside;
- ``source``: the plugin, distribution and version it came from (filled in by the registry).

The factory's contract per kind is in :mod:`rdpo_zoo.hookspecs`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping, Optional, Sequence, Union

from rdpo_zoo.errors import UserInputError

__all__ = [
    "KINDS",
    "PLURALS",
    "Option",
    "OptionError",
    "Source",
    "Part",
    "EstimatorPart",
    "LossPart",
    "PenaltyPart",
    "RewardPart",
    "ModelPart",
    "ModelFamilyPart",
    "StepFamilyPart",
    "Preset",
    "PART_TYPES",
    "LOSS_COMMON_OPTIONS",
    "SETTINGS",
    "ROLLOUTS",
    "parse_assignments",
    "closest",
]

#: The kinds of part, in the order ``rdpo-zoo plugins`` lists them.
KINDS = ("estimator", "loss", "penalty", "reward", "model", "model-family", "step-family", "preset")
PLURALS = {
    "estimator": "estimators",
    "loss": "losses",
    "penalty": "penalties",
    "reward": "rewards",
    "model": "models",
    "model-family": "model families",
    "step-family": "step families",
    "preset": "presets",
}

_TYPES = (bool, int, float, str, dict)
_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_OPTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def closest(name: str, known: Iterable[str]) -> Optional[str]:
    """The known name most like ``name`` (difflib), or ``None`` when nothing is close."""
    matches = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _suggest(hint: Optional[str]) -> str:
    """The end of an "unknown name" sentence: ``; did you mean 'x'?`` or ``.``."""
    return f"; did you mean {hint!r}?" if hint else "."


class OptionError(UserInputError):
    """A bad option value or an unknown option name; the message names the part and the option."""


# --------------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Option:
    """One typed option of a part, as plain data (the trl habit: a default and a help string per field).

    Attributes:
        name: a Python identifier (it becomes a keyword argument of the factory).
        type: ``float``, ``int``, ``str``, ``bool`` (or ``dict`` for preset settings only).
        default: the value when the option is not given; ``None`` makes the option nullable (``none`` on the
            command line).
        help: one line for ``--help`` and ``rdpo-zoo plugins``.
        choices: the allowed values (for ``str`` options, usually).
        min, max: bounds for numbers; ``min_exclusive`` / ``max_exclusive`` make them strict.
        nullable: whether ``None`` is allowed; defaults to ``default is None``.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: Optional[tuple] = None
    min: Optional[float] = None
    max: Optional[float] = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    nullable: Optional[bool] = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not _OPTION_NAME.match(self.name):
            raise ValueError(f"Option name: expected a Python identifier, got {self.name!r}")
        if self.type not in _TYPES:
            raise ValueError(f"Option {self.name!r}: type must be one of bool, int, float, str, dict; got {self.type!r}")
        if not isinstance(self.help, str) or "\n" in self.help:
            raise ValueError(f"Option {self.name!r}: help must be one line of text")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.nullable is None:
            object.__setattr__(self, "nullable", self.default is None)
        if self.default is not None or not self.nullable:
            # the default must itself be valid: a schema that contradicts itself fails where it is written
            self.convert(self.default, where=f"Option {self.name!r} default")

    # -- conversion --------------------------------------------------------------------------------------

    def describe(self) -> str:
        """A short type description: ``float > 0``, ``one of inside, outside``, ``float in (0, 1) or none``."""
        if self.choices is not None:
            text = "one of " + ", ".join(str(c) for c in self.choices)
        else:
            text = self.type.__name__
            lo = None if self.min is None else ("(" if self.min_exclusive else "[") + _num(self.min)
            hi = None if self.max is None else _num(self.max) + (")" if self.max_exclusive else "]")
            if lo and hi:
                text += f" in {lo}, {hi}"
            elif lo:
                text += (" > " if self.min_exclusive else " >= ") + _num(self.min)
            elif hi:
                text += (" < " if self.max_exclusive else " <= ") + _num(self.max)
        return text + (" or none" if self.nullable else "")

    def convert(self, value: Any, where: str = "") -> Any:
        """``value`` (a string from the command line, or an already-typed value from a preset, a config file or
        Python) as this option's type, checked against its choices and bounds. Raises :class:`OptionError`."""
        where = where or f"option {self.name!r}"

        def bad(reason: str = ""):
            return OptionError(f"{where}: expected {reason or self.describe()}, got {value!r}")

        if value is None:
            if self.nullable:
                return None
            raise bad()
        if self.nullable and isinstance(value, str) and value.strip().lower() in _NONE_WORDS:
            return None
        kind = self.type
        if kind is bool:
            if isinstance(value, bool):
                out = value
            elif isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
                out = value.strip().lower() in _TRUE_WORDS
            else:
                raise bad("a boolean (true/false, yes/no, 1/0)")
        elif kind is int:
            if isinstance(value, bool):
                raise bad()
            if isinstance(value, int):
                out = value
            elif isinstance(value, float) and value.is_integer():
                out = int(value)
            elif isinstance(value, str):
                try:
                    out = int(value.strip())
                except ValueError:
                    raise bad() from None
            else:
                raise bad()
        elif kind is float:
            if isinstance(value, bool):
                raise bad()
            if isinstance(value, (int, float)):
                out = float(value)
            elif isinstance(value, str):
                try:
                    out = float(value.strip())
                except ValueError:
                    raise bad() from None
            else:
                raise bad()
            if not math.isfinite(out):
                raise bad("a finite " + self.describe())
        elif kind is str:
            if not isinstance(value, str):
                raise bad()
            out = value
        else:  # dict
            if not isinstance(value, Mapping):
                raise bad("a mapping")
            out = dict(value)
        if self.choices is not None and out not in self.choices:
            hint = closest(str(out), [str(c) for c in self.choices])
            raise bad(self.describe() + (f" (did you mean {hint!r}?)" if hint else ""))
        if kind in (int, float):
            if self.min is not None and (out <= self.min if self.min_exclusive else out < self.min):
                raise bad()
            if self.max is not None and (out >= self.max if self.max_exclusive else out > self.max):
                raise bad()
        return out

    def to_dict(self) -> dict:
        """JSON-ready plain data (``rdpo-zoo plugins --json``)."""
        data = {
            "name": self.name,
            "type": self.type.__name__,
            "default": self.default,
            "help": self.help,
            "nullable": self.nullable,
            "describe": self.describe(),
        }
        for key in ("choices", "min", "max"):
            if getattr(self, key) is not None:
                data[key] = list(self.choices) if key == "choices" else getattr(self, key)
        if self.min_exclusive:
            data["min_exclusive"] = True
        if self.max_exclusive:
            data["max_exclusive"] = True
        return data


def _num(x: float) -> str:
    return f"{x:g}"


def parse_assignments(pairs: Union[str, Iterable[str]], where: str = "option") -> dict[str, str]:
    """``["beta=0.1", "clamp_eps=none"]`` -> ``{"beta": "0.1", "clamp_eps": "none"}``: the raw strings of
    repeated ``--loss-opt KEY=VALUE`` flags (the value may contain ``=`` and commas); the part's options type them."""
    if isinstance(pairs, str):
        pairs = [pairs]
    out: dict[str, str] = {}
    for item in pairs:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise OptionError(f"{where}: expected KEY=VALUE (e.g. beta=0.1), got {item!r}")
        if key in out:
            raise OptionError(f"{where}: {key!r} is given twice ({out[key]!r} and {value.strip()!r})")
        out[key] = value.strip()
    return out


def _check_options(options: Sequence[Option], owner: str) -> tuple:
    options = tuple(options)
    seen = set()
    for option in options:
        if not isinstance(option, Option):
            raise TypeError(f"{owner}: options must be rdpo_zoo.Option objects, got {type(option).__name__}")
        if option.name in seen:
            raise ValueError(f"{owner}: option {option.name!r} is declared twice")
        seen.add(option.name)
    return options


# ---------------------------------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class Source:
    """Where a part came from: the plugin (its entry-point name, or the name given to ``register``), the
    distribution that ships it and its version (``None`` for plugins registered in-process)."""

    plugin: str
    distribution: Optional[str] = None
    version: Optional[str] = None

    def describe(self) -> str:
        if self.distribution is None:
            return f"{self.plugin} (registered in-process)"
        return f"{self.distribution} {self.version}"


@dataclass(frozen=True)
class Part:
    """Base of every part. Subclasses fix ``kind``; plugins create the subclasses and pass them to ``register``."""

    kind: ClassVar[str] = ""

    name: str
    description: str
    factory: Union[str, Callable[..., Any], None] = None
    options: Sequence[Option] = ()
    source: Optional[Source] = field(default=None, compare=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"{self.kind} name: expected lower-case letters, digits, '-', '_' or '.', got {self.name!r}"
            )
        if not isinstance(self.description, str) or not self.description.strip() or "\n" in self.description:
            raise ValueError(f"{self.kind} {self.name!r}: description must be one non-empty line")
        if self.factory is not None and not callable(self.factory) and not _is_target(self.factory):
            raise ValueError(
                f"{self.kind} {self.name!r}: factory must be a callable or a 'package.module:attribute' string, "
                f"got {self.factory!r}"
            )
        object.__setattr__(self, "options", _check_options(self.options, f"{self.kind} {self.name!r}"))
        common = {o.name for o in self.common_options()}
        clash = common & {o.name for o in self.options}
        if clash:
            raise ValueError(
                f"{self.kind} {self.name!r}: option(s) {sorted(clash)} are common to every {self.kind} and are "
                "declared for you; choose other names"
            )

    # -- options -----------------------------------------------------------------------------------------

    def common_options(self) -> tuple:
        """Options every part of this kind has (a loss's β and clamp, a penalty's λ and placement)."""
        return ()

    @property
    def all_options(self) -> tuple:
        """The common options followed by the part's own."""
        return self.common_options() + tuple(self.options)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name!r}"

    def option(self, name: str) -> Option:
        for option in self.all_options:
            if option.name == name:
                return option
        known = [o.name for o in self.all_options]
        hint = closest(name, known)
        raise OptionError(
            f"{self.label} has no option {name!r}"
            + _suggest(hint)
            + (f" Its options: {', '.join(known)}" if known else " It takes no options")
        )

    def defaults(self) -> dict:
        return {o.name: o.default for o in self.all_options}

    def parse_options(self, values: Union[Mapping[str, Any], Iterable[str], None] = None) -> dict:
        """Every option of the part as a typed value: the defaults, updated with ``values``.

        ``values`` is a mapping (strings from the command line or typed values) or a list of ``KEY=VALUE``
        strings. An unknown name or a bad value raises :class:`OptionError` naming the part and the option.
        """
        if values is None:
            values = {}
        elif not isinstance(values, Mapping):
            values = parse_assignments(values, where=f"{self.label} options")
        typed = self.defaults()
        for key, value in values.items():
            option = self.option(key)
            typed[key] = option.convert(value, where=f"{self.label} option {key!r}")
        return typed

    # -- building ----------------------------------------------------------------------------------------

    def load(self) -> Any:
        """The object the factory names, imported now (the first time heavy modules may be imported)."""
        if self.factory is None:
            raise TypeError(f"{self.label} has no factory")
        if callable(self.factory):
            return self.factory
        return _import_target(self.factory, self.label)

    def build(self, options=None) -> Any:
        """Call the factory with every option typed: ``factory(**options)``."""
        return self.load()(**self.parse_options(options))

    def to_dict(self) -> dict:
        """JSON-ready plain data for ``rdpo-zoo plugins --json``."""
        source = self.source or Source("?")
        return {
            "kind": self.kind,
            "name": self.name,
            "description": self.description,
            "plugin": source.plugin,
            "distribution": source.distribution,
            "version": source.version,
            # every option, the kind's common ones (a loss's beta, clamp_eps) first and marked
            "options": [dict(o.to_dict(), common=o in self.common_options()) for o in self.all_options],
        }


def _is_target(value) -> bool:
    return isinstance(value, str) and re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$", value) is not None


def _import_target(target: str, label: str):
    module_name, _, attribute = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(f"{label}: cannot import {module_name!r} (its factory {target!r}): {error}") from error
    for piece in attribute.split("."):
        try:
            obj = getattr(obj, piece)
        except AttributeError:
            raise ImportError(f"{label}: {module_name!r} has no attribute {attribute!r} (its factory {target!r})") from None
    return obj


@dataclass(frozen=True)
class EstimatorPart(Part):
    """An estimator: labels the branches of a step pair (which one is preferred), e.g. final-order, x0-hat,
    delta-q. ``factory(**options)`` returns the estimator object (its interface is the rollout's)."""

    kind: ClassVar[str] = "estimator"


#: β and the ratio clamp belong to every pairwise loss (they are arguments of ``rdpo_zoo.losses.pairwise_losses``).
LOSS_COMMON_OPTIONS = (
    Option("beta", float, 0.1, "β, the inverse temperature on the log-ratio gap r_w − r_l", min=0.0, min_exclusive=True),
    Option(
        "clamp_eps",
        float,
        None,
        "the D3PO/SPO trust region: clamp each ratio exp(r) to [1 − ε, 1 + ε] (none: no clamp)",
        min=0.0,
        max=1.0,
        min_exclusive=True,
        max_exclusive=True,
    ),
)


@dataclass(frozen=True)
class LossPart(Part):
    """A pairwise loss. ``factory`` names an ``rdpo_zoo.losses.PairwiseLoss`` (or a zero-argument callable that
    returns one): the formula ``fn(LossInputs) -> [P]``. Its own options reach the formula as
    ``LossInputs.options``; β and ``clamp_eps`` are common to every loss.

    Attributes:
        fused: the name of the loss's fused kernel form (``None`` for losses that only have the PyTorch form).
        penalty: a penalty the loss always includes (``rdpo`` is ``dpo`` with ``psi``), or ``None``.
    """

    kind: ClassVar[str] = "loss"
    fused: Optional[str] = None
    penalty: Optional[str] = None

    def common_options(self) -> tuple:
        return LOSS_COMMON_OPTIONS

    def load(self):
        from rdpo_zoo.losses import PairwiseLoss, PolicyGradientLoss

        formulas = (PairwiseLoss, PolicyGradientLoss)  # pairwise (DPO family) or per-sample (DDPO's ppo-clip)
        obj = super().load()
        if not isinstance(obj, formulas) and callable(obj):
            obj = obj()
        if not isinstance(obj, formulas):
            raise TypeError(f"{self.label}: its factory must give an rdpo_zoo.losses.PairwiseLoss or PolicyGradientLoss, "
                            f"got {type(obj).__name__}")
        return obj

    def build(self, options=None):
        """Refused: a loss is resolved with the penalty it includes, which is looked up in the registry, a layer
        above the parts (``rdpo_zoo.resolve``): ``rdpo_zoo.build_loss(part, options)`` gives its Objective."""
        raise TypeError(f"{self.label}: build it with rdpo_zoo.build_loss({self.name!r}, options[, penalty, "
                        "penalty_options]), which also looks up the penalty it includes")

    def to_dict(self) -> dict:
        return dict(super().to_dict(), fused=self.fused, penalty=self.penalty)


@dataclass(frozen=True)
class PenaltyPart(Part):
    """A penalty added to a pairwise loss with weight λ (RDPO's Ψ, DPOP). ``factory`` names an
    ``rdpo_zoo.losses.Penalty`` (or a zero-argument callable returning one): ``fn(r_w, r_l) -> [P]``.

    Attributes:
        fused: the name of its fused kernel form, or ``None``.
        default_lambda: the default of the common ``lambda`` option.
    """

    kind: ClassVar[str] = "penalty"
    fused: Optional[str] = None
    default_lambda: float = 1.0

    def common_options(self) -> tuple:
        return (
            Option("lambda", float, self.default_lambda, "λ, the penalty's weight (not multiplied by β)", min=0.0),
            Option(
                "placement",
                str,
                "inside",
                "inside the loss's margin (the paper's form) or outside, added to the loss (DPOP-style)",
                choices=("inside", "outside"),
            ),
        )

    def load(self):
        from rdpo_zoo.losses import Penalty

        obj = super().load()
        if not isinstance(obj, Penalty) and callable(obj):
            obj = obj()
        if not isinstance(obj, Penalty):
            raise TypeError(f"{self.label}: its factory must give an rdpo_zoo.losses.Penalty, got {type(obj).__name__}")
        return obj

    def build(self, options=None):
        """``(Penalty, {"lambda": λ, "placement": ...})``: the formula and its typed options."""
        return self.load(), self.parse_options(options)

    def to_dict(self) -> dict:
        return dict(super().to_dict(), fused=self.fused)


@dataclass(frozen=True)
class RewardPart(Part):
    """A reward: ``factory(**options)`` returns an ``rdpo_zoo.rewards.Reward`` (a ``Reward`` subclass is itself
    a fine factory).

    Attributes:
        availability: for rewards whose weights are not shipped, a cheap check (no torch, no network) of whether
            they are on this machine: a callable or a ``"module:attribute"`` string, called with the part's typed
            options, returning ``(available, detail)``. ``None`` (the default) for rewards that need no files.
            ``rdpo-zoo plugins`` shows its answer for the default options.
    """

    kind: ClassVar[str] = "reward"
    availability: Union[str, Callable[..., Any], None] = field(default=None, compare=False)

    def __post_init__(self):
        super().__post_init__()
        if self.availability is not None and not callable(self.availability) and not _is_target(self.availability):
            raise ValueError(
                f"reward {self.name!r}: availability must be a callable or a 'package.module:attribute' string, "
                f"got {self.availability!r}"
            )

    def check_available(self, options=None) -> Optional[tuple]:
        """``(available, detail)`` for these options (the defaults when none are given), or ``None`` when the reward
        declares no check. A check that raises is reported as not available, with its error."""
        if self.availability is None:
            return None
        try:
            check = self.availability
            if not callable(check):
                check = _import_target(check, f"{self.label} availability")
            available, detail = check(**self.parse_options(options))
            return bool(available), str(detail)
        except Exception as error:  # noqa: BLE001 -- a listing must not fail because one check did
            return False, f"the availability check failed: {type(error).__name__}: {error}"

    def build(self, options=None):
        from rdpo_zoo.rewards import Reward

        reward = super().build(options)
        if not isinstance(reward, Reward):
            raise TypeError(f"{self.label}: its factory must return an rdpo_zoo.rewards.Reward, got {type(reward).__name__}")
        return reward

    def to_dict(self) -> dict:
        status = self.check_available()
        weights = None if status is None else {"available": status[0], "detail": status[1]}
        return dict(super().to_dict(), weights=weights)


@dataclass(frozen=True)
class ModelPart(Part):
    """A model: ``factory(**options)`` returns a diffusers pipeline (UNet, text encoder(s), VAE, scheduler).

    Attributes:
        family: the model family that drives the pipeline (a ``model-family`` part); ``None``: the first family
            whose ``matches(pipe)`` is true.
    """

    kind: ClassVar[str] = "model"
    family: Optional[str] = None

    def to_dict(self) -> dict:
        return dict(super().to_dict(), family=self.family)


def _load_subclass(part: Part, base_path: str):
    module, _, name = base_path.partition(":")
    base = getattr(importlib.import_module(module), name)
    cls = Part.load(part)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{part.label}: its factory must name a subclass of {module}.{name}, got {cls!r}")
    return cls


@dataclass(frozen=True)
class ModelFamilyPart(Part):
    """A model family: ``factory`` names an ``rdpo_zoo.families.ModelFamily`` subclass (how one kind of pipeline
    is driven: denoiser, conditioning, LoRA targets, save/load). ``build(pipe)`` wraps a loaded pipeline."""

    kind: ClassVar[str] = "model-family"

    def load(self):
        return _load_subclass(self, "rdpo_zoo.families:ModelFamily")

    def build_family(self, pipe):
        return self.load()(pipe)

    def build(self, options=None):
        raise TypeError(f"{self.label}: a model family wraps a pipeline: build_family(pipe)")


@dataclass(frozen=True)
class StepFamilyPart(Part):
    """A step family: ``factory`` names an ``rdpo_zoo.steps.StepFamily`` subclass (a sampler's timesteps, its
    Gaussian steps (a, b, σ), x̂0 and its training process), chosen by the method setting ``scheduler``."""

    kind: ClassVar[str] = "step-family"

    def load(self):
        return _load_subclass(self, "rdpo_zoo.steps:StepFamily")

    def build_family(self, scheduler_config: dict, num_steps: int, eta=None, options=None, schedule=None):
        """``cls(scheduler_config, num_steps, eta, **options, **schedule)``: ``options`` are the part's own (typed
        and checked); ``schedule`` is the model family's ``step_options`` (e.g. FLUX's ``mu`` and ``sigmas``)."""
        return self.load()(scheduler_config, num_steps, eta, **self.parse_options(options), **(schedule or {}))

    def build(self, options=None):
        raise TypeError(f"{self.label}: a step family needs a scheduler config: build_family(config, num_steps, eta)")


# --------------------------------------------------------------------------------------------------- presets

#: Rollout modes (how step pairs are formed); the rollout issue implements them.
ROLLOUTS = (
    "single",  # DDPO: single trajectories, no pairs
    "two-trajectories",  # D3PO: two trajectories from one x_T, labelled by their final images
    "noised-pairs",  # Diffusion-DPO: a preferred and a dispreferred final image noised with the same t and ε
    "branch-random",  # SPO: k candidates from one x_t, continue from a random one
    "branch-winner",  # TailorPO / RDPO: two children from one x_t, continue from the winner
)

#: The settings a preset may fix, with their types; a trainer flag of the same name overrides the preset's.
#: ``trajectory`` needs a rollout that records which trajectory each transition (pair) comes from
OPTIMISER_STEPS = ("minibatch", "trajectory")
TRAJECTORY_ROLLOUTS = ("two-trajectories", "single")

SETTINGS = (
    Option("rollout", str, "branch-winner", "how step pairs are formed", choices=ROLLOUTS),
    Option("group_size", int, 1, "trajectories per prompt of a single-trajectory rollout, each from its own noise "
           "(GRPO's group G: every prompt of an iteration is sampled G times)", min=1),
    Option("num_candidates", int, 2, "children drawn from one x_t (branching rollouts)", min=2),
    Option("branch_start", int, 0, "denoising steps taken on one path before branching starts (SPO: 4)", min=0),
    Option("estimator", str, None, "which branch of a pair wins: an estimator part"),
    Option("estimator_options", dict, {}, "the estimator's options"),
    Option("loss", str, "dpo", "the pairwise loss: a loss part"),
    Option("loss_options", dict, {}, "the loss's options (beta, clamp_eps, its own)"),
    Option("penalty", str, None, "a penalty part added to the loss (none: no penalty)"),
    Option("penalty_options", dict, {}, "the penalty's options (lambda, placement)"),
    Option("reduction", str, "mean", "sum or mean over the D latent elements of a log-likelihood", choices=("mean", "sum")),
    Option("scheduler", str, "ddim", "the rollout's sampler, a step family (ddim, ddpm, a plugin's; none: the "
           "training noise schedule)", nullable=True),
    Option("eta", float, 1.0, "DDIM's η (1: the stochastic step every method trains on)", min=0.0, nullable=True),
    Option("num_steps", int, 20, "inference steps T of a rollout", min=1),
    Option("guidance_scale", float, 5.0, "classifier-free guidance g of the rollout (1: conditional only)", min=0.0),
    Option("gradient_guidance", bool, None, "widen each pair's reward gap with the reward's gradient (TailorPO-G); "
           "none (auto): on for a branching rollout with a differentiable reward, as RDPO (RDPO* + Ψ) is built on it"),
    Option("guidance_step", float, 0.1, "TailorPO-G step: x_w moves step·σ_t·√D along ∇r(x̂0) (a fraction of the "
           "step's noise norm)", min=0.0),
    Option(
        "train_timesteps",
        str,
        "20,16,12,8,4",  # the RDPO paper's fine-tuned steps of T = 20 (Sec. 5)
        "the steps trained on: all, uniform (t ~ U{0..999}, noised pairs), or a list of steps t of T such as 20,16,12",
    ),
    Option("threshold", float, None, "drop pairs whose reward gap (in units of the reward's scale) is below this", min=0.0),
    Option("gap_rule", str, "raw", "pair filter: raw (Δ/scale > threshold) or softmax (SPO: tanh(Δ/2scale) > "
           "threshold)", choices=("raw", "softmax")),
    Option("optimiser_step", str, "minibatch", "what one optimiser step covers: a minibatch of minibatch_size random "
           "transitions, or every trained step of one trajectory (a pair of trajectories under two-trajectories), "
           "the gradient accumulated over them (the public DDPO and D3PO code)", choices=OPTIMISER_STEPS),
    # 1e-3 trains the embedded default's LoRA within minutes (docs/rollout.md); every preset sets its paper's own
    Option("learning_rate", float, 1e-3, "the optimiser's learning rate", min=0.0, min_exclusive=True),
)
_SETTINGS_BY_NAME = {o.name: o for o in SETTINGS}
#: settings that name a part, and the key of that part's options
PART_SETTINGS = {"estimator": "estimator_options", "loss": "loss_options", "penalty": "penalty_options"}


def _check_settings(settings: Mapping[str, Any], where: str) -> dict:
    out = {}
    for key, value in settings.items():
        option = _SETTINGS_BY_NAME.get(key)
        if option is None:
            hint = closest(key, _SETTINGS_BY_NAME)
            raise OptionError(
                f"{where}: unknown setting {key!r}"
                + _suggest(hint)
                + f" Known settings: {', '.join(_SETTINGS_BY_NAME)}"
            )
        out[key] = option.convert(value, where=f"{where} setting {key!r}")
    return out


@dataclass(frozen=True)
class Preset(Part):
    """A method as data: a named combination of settings (see ``SETTINGS``). Explicit flags override it
    (:func:`rdpo_zoo.merge_settings` gives the merged settings)."""

    kind: ClassVar[str] = "preset"
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        if self.factory is not None or self.options:
            raise ValueError(f"preset {self.name!r}: a preset is data (settings=...), not a factory with options")
        object.__setattr__(self, "settings", _check_settings(self.settings, f"preset {self.name!r}"))

    def build(self, overrides=None) -> dict:
        """Refused: merging looks parts up in the registry, a layer above the parts (``rdpo_zoo.resolve``)."""
        raise TypeError(f"{self.label}: merge it with rdpo_zoo.merge_settings({self.name!r}, overrides), which "
                        "looks its parts up in the registry")

    def to_dict(self) -> dict:
        data = super().to_dict()
        del data["options"]
        return dict(data, settings=dict(self.settings))


PART_TYPES = {cls.kind: cls for cls in (EstimatorPart, LossPart, PenaltyPart, RewardPart, ModelPart, ModelFamilyPart,
                                        StepFamilyPart, Preset)}


def replace_source(part: Part, source: Source) -> Part:
    return dataclasses.replace(part, source=source)
