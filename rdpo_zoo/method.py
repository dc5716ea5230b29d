"""The method as one typed, validated value: :class:`Method`, one field per setting of ``rdpo_zoo.parts.SETTINGS``.

Presets, config files, command-line flags and the paper study all end in one: ``rdpo_zoo.merge_settings`` merges
a preset with explicit settings and returns a ``Method``, whose construction checks every field once (its type,
choices and bounds, from the setting's :class:`~rdpo_zoo.parts.Option`). The trainer reads typed attributes
(``method.rollout``, ``method.loss_options``); ``method.to_dict()`` is the ``method`` table of a run's
``config.json``. A ``Method`` is also a read-only mapping (``method["rollout"]``), for code written against the
settings dictionary it replaces. No torch here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

from rdpo_zoo.parts import SETTINGS, OptionError, _check_settings

__all__ = ["Method", "as_method"]


class _MethodBase(Mapping):
    """What every :class:`Method` does besides holding its fields: validation, the mapping view, the dict form."""

    def __post_init__(self):
        for option in SETTINGS:
            value = getattr(self, option.name)
            typed = option.convert(value, where=f"method setting {option.name!r}")
            if isinstance(typed, dict):
                typed = dict(typed)
            object.__setattr__(self, option.name, typed)

    @classmethod
    def from_settings(cls, settings: Optional[Mapping[str, Any]] = None, where: str = "method") -> "Method":
        """A method from a mapping of settings (typed values or strings); a missing setting takes its default, an
        unknown one is refused naming ``where`` and the closest known name."""
        return cls(**_check_settings(dict(settings or {}), where))

    def to_dict(self) -> dict:
        """Every setting, in ``SETTINGS`` order (the ``method`` table of ``config.json``)."""
        return {o.name: (dict(v) if isinstance(v := getattr(self, o.name), dict) else v) for o in SETTINGS}

    def replace(self, **changes) -> "Method":
        """A copy with ``changes``, checked like a new method."""
        return dataclasses.replace(self, **changes)

    # -- the read-only mapping view ---------------------------------------------------------------------------
    def __getitem__(self, name: str):
        if name not in _NAMES:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self):
        return iter(_NAMES)

    def __len__(self) -> int:
        return len(_NAMES)


_NAMES = tuple(o.name for o in SETTINGS)


def _annotation(option) -> Any:
    return Optional[option.type] if option.nullable else option.type


def _default(option):
    if isinstance(option.default, dict):
        return dataclasses.field(default_factory=lambda d=option.default: dict(d), metadata={"help": option.help})
    return dataclasses.field(default=option.default, metadata={"help": option.help})


#: One field per method setting, in ``SETTINGS`` order (the schema stays in one place: ``rdpo_zoo.parts.SETTINGS``).
Method = dataclasses.make_dataclass(
    "Method", [(o.name, _annotation(o), _default(o)) for o in SETTINGS], bases=(_MethodBase,), frozen=True,
    eq=True, namespace={"__doc__": "A method's settings, typed and checked (see the module docstring)."},
)
Method.__module__ = __name__


def as_method(value) -> "Method":
    """``value`` as a :class:`Method`: a method as it is, a mapping of settings checked into one."""
    if isinstance(value, Method):
        return value
    if isinstance(value, Mapping):
        return Method.from_settings(value)
    raise OptionError(f"method: expected a Method or a mapping of method settings, got {type(value).__name__}")
