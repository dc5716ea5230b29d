"""The plugin registry: loads plugins through the ``rdpo_zoo`` entry-point group, collects their parts, and looks
parts up by kind and name. No torch here (building a part may import it; listing and looking up never do).

Which plugins load is set by the environment variable ``RDPO_ZOO_PLUGINS``, read when a registry is created:

============================  ================================================================================
``RDPO_ZOO_PLUGINS``          loads
============================  ================================================================================
unset, or ``all``             every ``rdpo_zoo`` entry point of every installed distribution (the default)
``builtin``                   only the entry points of the ``rdpo-zoo`` distribution itself (what tests use)
``none`` or empty             nothing (then add plugins in-process with ``rdpo_zoo.register``)
a comma list                  the union of its items; an item is ``builtin``, ``all``, a distribution name
                              (``rdpo-zoo-example-plugin``; ``-``/``_``/``.`` and case do not matter) or an
                              entry-point name (``rdpo_zoo.losses``), e.g. ``builtin,rdpo-zoo-example-plugin``
============================  ================================================================================

An item that matches nothing is reported as a broken plugin (so a typo is visible in ``rdpo-zoo plugins``).

Settings resolution (a preset merged with flags, a loss with its penalty) is :mod:`rdpo_zoo.resolve`, which asks
this registry for parts. Typical use (the trainer, the CLI)::

    import rdpo_zoo

    settings = rdpo_zoo.merge_settings("rdpo", {"loss_options": {"beta": "0.2"}})   # preset + flags
    objective = rdpo_zoo.build_loss(settings["loss"], settings["loss_options"],
                                    settings["penalty"], settings["penalty_options"])
    per_pair = objective(log_ratios)                                               # [P]
    reward = rdpo_zoo.get_part("reward", "compressibility").build({"quality": "95"})
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import traceback
import types
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable, Iterator, Optional

import pluggy

from rdpo_zoo import hookspecs
from rdpo_zoo.errors import UserInputError
from rdpo_zoo.parts import KINDS, PART_TYPES, PLURALS, Part, Source, _suggest, closest

__all__ = [
    "ENV_VAR",
    "BUILTIN_DISTRIBUTION",
    "Registry",
    "PluginInfo",
    "UnknownPartError",
    "DuplicatePartError",
    "PluginError",
    "build_reward",
    "resolve_reward",
    "get_registry",
    "reset_registry",
    "temporary_registry",
    "register",
    "unregister",
    "get_part",
    "list_parts",
]

ENV_VAR = "RDPO_ZOO_PLUGINS"
BUILTIN_DISTRIBUTION = "rdpo-zoo"


def normalize(name: str) -> str:
    """A distribution name as packaging compares them (PEP 503): ``Rdpo_Zoo`` -> ``rdpo-zoo``."""
    return re.sub(r"[-_.]+", "-", name).lower()


class UnknownPartError(UserInputError, LookupError):
    """No part of that kind has that name. The message lists the known names and the closest match."""

    def __str__(self):  # LookupError would quote the message like a key
        return str(self.args[0]) if self.args else ""


class PluginError(RuntimeError):
    """A plugin's hook raised (the message names the hook; the cause is the original error)."""


class DuplicatePartError(UserInputError, LookupError):
    """Two plugins registered the same name for the same kind. The message names both distributions."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


@dataclass
class PluginInfo:
    """One plugin, loaded or broken: its name (entry-point name, or the name given to ``register``), where it
    came from, the hooks it implements, the parts it added, and for a broken plugin its error."""

    name: str
    distribution: Optional[str] = None
    version: Optional[str] = None
    module: Optional[str] = None
    error: Optional[str] = None
    traceback: Optional[str] = None
    hooks: list = field(default_factory=list)
    parts: list = field(default_factory=list)
    obj: Any = field(default=None, repr=False)

    @property
    def broken(self) -> bool:
        return self.error is not None

    @property
    def source(self) -> Source:
        return Source(self.name, self.distribution, self.version)

    def to_dict(self) -> dict:
        data = {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "status": "broken" if self.broken else "ok",
            "hooks": list(self.hooks),
            "parts": [f"{p.kind}:{p.name}" for p in self.parts],
        }
        if self.broken:
            data["error"] = self.error
        return data


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class Registry:
    """Plugins and their parts. One is created on first use from ``RDPO_ZOO_PLUGINS`` (:func:`get_registry`);
    tests build their own (``Registry(plugins="none")``, or :func:`temporary_registry`).

    Args:
        plugins: the selection, in ``RDPO_ZOO_PLUGINS`` syntax; ``None`` reads the environment variable.
        distributions: the ``importlib.metadata`` distributions to scan for entry points (default: every installed
            one); tests pass ``PathDistribution`` objects of throw-away ``*.dist-info`` folders.
    """

    def __init__(self, plugins: Optional[str] = None, distributions: Optional[Iterable[metadata.Distribution]] = None):
        self.selection = os.environ.get(ENV_VAR, "all") if plugins is None else plugins
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._plugins: dict[str, PluginInfo] = {}
        self._parts: dict[str, dict[str, list[Part]]] = {kind: {} for kind in KINDS}
        self._load_entry_points(distributions)

    # -- loading ---------------------------------------------------------------------------------------------

    def _load_entry_points(self, distributions) -> None:
        tokens = [t.strip() for t in self.selection.split(",") if t.strip()]
        if not tokens or tokens == ["none"]:
            return
        if distributions is None:
            distributions = metadata.distributions()
        found = []  # (distribution name, version, entry point), the first distribution of a name wins (as on sys.path)
        seen = set()
        for dist in distributions:
            name = dist.metadata["Name"] if dist.metadata else None
            if not name or normalize(name) in seen:
                continue
            seen.add(normalize(name))
            for ep in dist.entry_points:
                if ep.group == hookspecs.ENTRY_POINT_GROUP:
                    found.append((name, dist.version, ep))
        # the built-ins first, then by distribution and entry-point name: the order never depends on sys.path
        found.sort(key=lambda item: (normalize(item[0]) != BUILTIN_DISTRIBUTION, normalize(item[0]), item[2].name))
        used = set()
        for dist_name, version, ep in found:
            matched = [t for t in tokens if self._matches(t, dist_name, ep)]
            if matched:
                used.update(matched)
                self._load_entry_point(dist_name, version, ep)
        for token in tokens:
            if token not in used and token not in ("all", "none"):
                installed = sorted({d for d, _, _ in found}) or ["none"]
                hint = closest(token, [d for d, _, _ in found] + [ep.name for _, _, ep in found])
                self._plugins[f"{ENV_VAR}:{token}"] = PluginInfo(
                    name=token,
                    error=(
                        f"{ENV_VAR} names {token!r}, but no installed distribution or {hookspecs.ENTRY_POINT_GROUP} "
                        f"entry point has that name" + (f" (did you mean {hint!r}?)" if hint else "")
                        + f"; distributions with plugins: {', '.join(installed)}"
                    ),
                )

    @staticmethod
    def _matches(token: str, dist_name: str, ep) -> bool:
        if token == "all":
            return True
        if token == "builtin":
            return normalize(dist_name) == BUILTIN_DISTRIBUTION
        return token == ep.name or normalize(token) == normalize(dist_name)

    def _load_entry_point(self, dist_name: str, version: str, ep) -> None:
        info = PluginInfo(name=ep.name, distribution=dist_name, version=version, module=ep.value)
        if ep.name in self._plugins:
            other = self._plugins[ep.name]
            info.error = (
                f"the plugin name {ep.name!r} (entry point of {dist_name} {version}) is already taken by "
                f"{other.distribution} {other.version}; one of the two distributions must rename its entry point"
            )
            self._plugins[f"{dist_name}:{ep.name}"] = info
            return
        self._plugins[ep.name] = info
        try:
            obj = ep.load()
        except BaseException as error:  # noqa: BLE001 -- a plugin must never take the engine down (SystemExit too)
            if isinstance(error, KeyboardInterrupt):
                raise
            info.error = f"cannot import {ep.value!r}: {_error_text(error)}"
            info.traceback = traceback.format_exc()
            return
        try:
            self._add(info, obj)
        except Exception as error:  # noqa: BLE001
            info.error = str(error) if isinstance(error, PluginError) else _error_text(error)
            info.traceback = traceback.format_exc()

    def _add(self, info: PluginInfo, obj) -> None:
        """Register ``obj`` with pluggy, call its hooks, and commit its parts, all or nothing."""
        pm = self._pm
        if pm.is_registered(obj):
            other = next((p for p in self._plugins.values() if p.obj is obj), None)
            raise ValueError(f"the same plugin object is already registered as {other.name if other else '?'!r}")
        for attribute in dir(obj):
            if attribute not in hookspecs.HOOKS and pm.parse_hookimpl_opts(obj, attribute) is not None:
                hint = closest(attribute, hookspecs.HOOKS)
                raise PluginError(
                    f"unknown hook {attribute!r}" + _suggest(hint)
                    + f" The hooks are: {', '.join(hookspecs.HOOKS)}"
                )
        pm.register(obj, name=info.name)
        try:
            staged: list[Part] = []
            hooks = []
            for hook_name, kind in hookspecs.HOOKS.items():
                for impl in getattr(pm.hook, hook_name).get_hookimpls():
                    if impl.plugin is not obj:
                        continue
                    hooks.append(hook_name)
                    if impl.hookwrapper or getattr(impl, "wrapper", False):
                        raise TypeError(f"{hook_name}: hook wrappers are not supported; write a plain hook")
                    register = self._register_callback(hook_name, kind, info, staged)
                    arguments = {"register": register}
                    try:
                        impl.function(*[arguments[name] for name in impl.argnames])
                    except Exception as error:
                        raise PluginError(f"hook {hook_name} raised {_error_text(error)}") from error
            self._check_duplicates(staged, info)
        except BaseException:
            pm.unregister(obj)
            raise
        info.obj, info.hooks, info.parts = obj, hooks, staged
        for part in staged:
            self._parts[part.kind].setdefault(part.name, []).append(part)

    def _register_callback(self, hook_name: str, kind: str, info: PluginInfo, staged: list):
        expected = PART_TYPES[kind]

        def register(part: Part) -> None:
            if not isinstance(part, expected):
                raise TypeError(
                    f"{hook_name} registers {PLURALS[kind]}: expected an rdpo_zoo.{expected.__name__}, "
                    f"got {type(part).__name__}"
                )
            if any(p.kind == kind and p.name == part.name for p in staged):
                raise ValueError(f"{kind} {part.name!r} is registered twice by this plugin")
            staged.append(dataclasses.replace(part, source=info.source))

        return register

    def _check_duplicates(self, staged, info: PluginInfo) -> None:
        """In-process registration refuses a taken name at once; entry points are checked at lookup instead
        (one bad plugin must not take the engine down), see :meth:`get`."""
        if info.distribution is not None:
            return
        for part in staged:
            taken = self._parts[part.kind].get(part.name)
            if taken:
                raise DuplicatePartError(_duplicate_message(part.kind, part.name, taken + [part]))

    # -- in-process registration ----------------------------------------------------------------------------

    def register(self, obj, name: Optional[str] = None) -> str:
        """Register a plugin object (a module, a class or an instance with ``@hookimpl`` functions) in-process.
        Its hooks run now; an error, or a name another plugin has already registered, raises here and leaves
        the registry as it was. Returns the plugin's name (for :meth:`unregister`)."""
        if name is None:
            name = getattr(obj, "__name__", None) or f"{type(obj).__name__}-{id(obj):x}"
        if name in self._plugins:
            raise ValueError(f"a plugin named {name!r} is already registered; pass another name= or unregister it")
        module = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
        info = PluginInfo(name=name, module=module)
        self._add(info, obj)
        self._plugins[name] = info
        return name

    def unregister(self, plugin) -> None:
        """Remove a plugin (its name or the object) and all its parts."""
        info = self._plugins.get(plugin) if isinstance(plugin, str) else None
        if info is None:
            info = next((p for p in self._plugins.values() if p.obj is plugin and p.obj is not None), None)
        if info is None:
            raise KeyError(f"no plugin {plugin!r} is registered; registered: {', '.join(self._plugins) or 'none'}")
        if info.obj is not None and self._pm.is_registered(info.obj):
            self._pm.unregister(info.obj)
        for part in info.parts:
            same = self._parts[part.kind].get(part.name, [])
            same[:] = [p for p in same if p is not part]
            if not same:
                self._parts[part.kind].pop(part.name, None)
        del self._plugins[next(k for k, v in self._plugins.items() if v is info)]

    # -- lookup ----------------------------------------------------------------------------------------------

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in KINDS:
            hint = closest(kind, KINDS)
            raise ValueError(
                f"kind: unknown kind of part {kind!r}" + _suggest(hint)
                + f" Kinds: {', '.join(KINDS)}"
            )

    def get(self, kind: str, name: str) -> Part:
        """The part of ``kind`` named ``name``; :class:`UnknownPartError` lists the known names and the closest
        one, :class:`DuplicatePartError` names the distributions that both registered it."""
        self._check_kind(kind)
        found = self._parts[kind].get(name)
        if not found:
            known = self.names(kind)
            hint = closest(name, known)
            message = f"{kind}: unknown {kind} {name!r}"
            message += _suggest(hint)
            message += f" Known {PLURALS[kind]}: {', '.join(known) if known else 'none'}"
            broken = [p for p in self._plugins.values() if p.broken]
            if broken:
                message += ". Broken plugins (see `rdpo-zoo plugins`): " + ", ".join(
                    f"{p.name} ({p.error})" for p in broken
                )
            raise UnknownPartError(message)
        if len(found) > 1:
            raise DuplicatePartError(_duplicate_message(kind, name, found))
        return found[0]

    def names(self, kind: str) -> list:
        """Sorted names of the parts of ``kind``."""
        self._check_kind(kind)
        return sorted(self._parts[kind])

    def parts(self, kind: Optional[str] = None) -> list:
        """Every part (of ``kind``), sorted by kind then name; a name two plugins registered appears twice."""
        kinds = KINDS if kind is None else (self._check_kind(kind) or (kind,))
        return [part for k in kinds for name in sorted(self._parts[k]) for part in self._parts[k][name]]

    def conflicts(self) -> list:
        """``[(kind, name, [parts...])]`` for every name registered by more than one plugin."""
        return [(k, n, list(ps)) for k in KINDS for n, ps in sorted(self._parts[k].items()) if len(ps) > 1]

    @property
    def plugins(self) -> list:
        """Every plugin, loaded or broken, as :class:`PluginInfo`."""
        return list(self._plugins.values())

    @property
    def broken(self) -> list:
        return [p for p in self._plugins.values() if p.broken]

    def to_dict(self) -> dict:
        """Everything ``rdpo-zoo plugins --json`` prints."""
        return {
            "selection": self.selection,
            "plugins": [p.to_dict() for p in self._plugins.values()],
            "parts": {kind: [p.to_dict() for p in self.parts(kind)] for kind in KINDS},
            "conflicts": [
                {"kind": k, "name": n, "distributions": [p.source.describe() for p in ps]} for k, n, ps in self.conflicts()
            ],
        }


def _duplicate_message(kind: str, name: str, parts) -> str:
    sources = " and ".join(p.source.describe() if p.source else "?" for p in parts)
    return (
        f"{kind} {name!r} is registered by more than one plugin: {sources}. Uninstall one, or choose which plugins "
        f"load with {ENV_VAR} (e.g. {ENV_VAR}=builtin,<distribution>)"
    )


# ------------------------------------------------------------------------------------------- the default registry

_default: Optional[Registry] = None


def get_registry() -> Registry:
    """The process's registry, created (plugins loaded) on first use from ``RDPO_ZOO_PLUGINS``."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def reset_registry() -> None:
    """Forget the process's registry; the next :func:`get_registry` loads the plugins again."""
    global _default
    _default = None


@contextlib.contextmanager
def temporary_registry(plugins: Optional[str] = None, distributions=None) -> Iterator[Registry]:
    """A fresh registry installed as the process's for the ``with`` block, then the previous one restored: the
    tests' way to register plugins without leaking them into other tests."""
    global _default
    previous, _default = _default, Registry(plugins, distributions)
    try:
        yield _default
    finally:
        _default = previous


def register(obj, name: Optional[str] = None) -> str:
    """Register a plugin in-process (notebooks, tests): see :meth:`Registry.register`."""
    return get_registry().register(obj, name)


def unregister(plugin) -> None:
    """Remove an in-process plugin (by name or object) and its parts."""
    get_registry().unregister(plugin)


def get_part(kind: str, name: str) -> Part:
    """The part of ``kind`` (estimator, loss, penalty, reward, model, preset) named ``name``."""
    return get_registry().get(kind, name)


def list_parts(kind: Optional[str] = None) -> list:
    """Every registered part (of ``kind``)."""
    return get_registry().parts(kind)


def resolve_reward(spec: str, options=None, registry: Optional[Registry] = None) -> list:
    """The parts of a reward specification, checked before any compute: ``[(name, weight, part, typed_options)]``.

    ``spec`` is a part name or ``NAME[:WEIGHT]+NAME[:WEIGHT]...``; ``options`` are ``KEY=VALUE`` settings (a dict), and
    for a combination each key names its part (``world-aesthetic.KEY``). Unknown names, bad weights, duplicates and
    bad options raise ``ValueError``/``LookupError`` naming them."""
    from rdpo_zoo.rewards import parse_reward_spec, split_reward_options

    registry = registry or get_registry()
    parsed = parse_reward_spec(spec)
    routed = split_reward_options([name for name, _ in parsed], options)
    resolved = []
    for name, weight in parsed:
        part = registry.get("reward", name)
        resolved.append((name, weight, part, part.parse_options(routed[name])))
    return resolved


def build_reward(spec: str, options=None, registry: Optional[Registry] = None):
    """The reward of a specification: a plain name builds its part as it is; ``a+b:0.5`` (or ``a:2``) builds an
    ``rdpo_zoo.rewards.CombinedReward`` of Σ weight · reward / scale (see :func:`resolve_reward`)."""
    from rdpo_zoo.rewards import CombinedReward

    resolved = resolve_reward(spec, options, registry)
    built = [(name, weight, part.build(typed)) for name, weight, part, typed in resolved]
    if len(built) == 1 and ":" not in spec:
        return built[0][2]
    return CombinedReward(built)
