"""The rollout modes, one record each: the value of the method setting ``rollout`` and everything the engine needs to
know about it. The setting's choices, the trainer's dispatch and its combination checks all read this table, so a
new mode is one record here and its function. No torch here (the function is named, imported when a rollout runs).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional

__all__ = ["RolloutMode", "ROLLOUT_TABLE", "rollout_mode", "register_rollout_mode", "unregister_rollout_mode",
           "CONTINUE_FROM", "YIELDS"]

#: What a rollout yields for the optimiser: labelled step pairs (``rdpo_zoo.rollout.StepPairs``), single-trajectory
#: transitions with the sampler's log-prob (``StepSamples``, for policy-gradient losses), or final-image pairs to be
#: noised (``rdpo_zoo.noised_pairs.NoisedPairs``, Diffusion-DPO).
YIELDS = ("step-pairs", "samples", "noised-pairs")


@dataclass(frozen=True)
class RolloutMode:
    """One rollout mode.

    Attributes:
        name: the ``rollout`` setting's value (``--rollout NAME``).
        function: ``"module:attribute"`` of the rollout function, called with the keywords ``model, cond, reward,
            generator`` and its ``arguments``.
        arguments: the further keywords it takes, of ``estimator, steps, k, continue_from, threshold, gap_rule,
            guidance, reduction`` (``rdpo_zoo.rollout.rollout`` passes those, and a branching mode's
            ``continue_from``).
        yields: one of :data:`YIELDS`.
        needs_estimator: pairs are labelled by a step-pair estimator (the method must name one).
        needs_sampler: it samples chains step by step, so the method must name a step family (``scheduler``).
        continue_from: for a branching mode, which child the chain continues from (``winner``, ``random``,
            ``loser``); ``None`` otherwise.
        records_trajectory: each pair (transition) records which trajectory it comes from, so the optimiser can
            step once per trajectory (``optimiser_step="trajectory"``).
        description: one line for ``--help``.
    """

    name: str
    function: str
    arguments: tuple
    yields: str
    needs_estimator: bool
    needs_sampler: bool
    continue_from: Optional[str] = None
    records_trajectory: bool = False
    description: str = ""

    @property
    def branching(self) -> bool:
        return self.continue_from is not None

    def __post_init__(self):
        if self.yields not in YIELDS:
            raise ValueError(f"rollout mode {self.name!r}: yields must be one of {YIELDS}, got {self.yields!r}")

    def load(self):
        module, _, attribute = self.function.partition(":")
        return getattr(importlib.import_module(module), attribute)


_BRANCHING = "rdpo_zoo.rollout:rollout_branching"
_BRANCHING_ARGUMENTS = ("estimator", "steps", "k", "continue_from", "threshold", "gap_rule", "guidance")

ROLLOUT_TABLE = {mode.name: mode for mode in (
    RolloutMode("single", "rdpo_zoo.rollout:rollout_single", ("steps", "reduction"), "samples", needs_estimator=False, needs_sampler=False,
                records_trajectory=True, description="DDPO, GRPO: single trajectories, no pairs"),
    RolloutMode("two-trajectories", "rdpo_zoo.rollout:rollout_trajectory_pairs",
                ("estimator", "steps", "threshold", "gap_rule"), "step-pairs", needs_estimator=True,
                needs_sampler=True, records_trajectory=True,
                description="D3PO: two trajectories from one x_T, each step a pair with its own x_t"),
    RolloutMode("noised-pairs", "rdpo_zoo.noised_pairs:rollout_noised_pairs", ("threshold", "gap_rule"), "noised-pairs", needs_estimator=False,
                needs_sampler=False,
                description="Diffusion-DPO: a preferred and a dispreferred final image noised with the same t and ε"),
    RolloutMode("branch-random", _BRANCHING, _BRANCHING_ARGUMENTS, "step-pairs", needs_estimator=True, needs_sampler=True,
                continue_from="random", description="SPO: k candidates from one x_t, continue from a random one"),
    RolloutMode("branch-winner", _BRANCHING, _BRANCHING_ARGUMENTS, "step-pairs", needs_estimator=True, needs_sampler=True,
                continue_from="winner", description="TailorPO / RDPO: children from one x_t, continue from the winner"),
    RolloutMode("branch-loser", _BRANCHING, _BRANCHING_ARGUMENTS, "step-pairs", needs_estimator=True, needs_sampler=True,
                continue_from="loser", description="children from one x_t, continue from the loser (an ablation)"),
)}

#: which child a branching chain may continue from
CONTINUE_FROM = tuple(dict.fromkeys(m.continue_from for m in ROLLOUT_TABLE.values() if m.continue_from))


def rollout_mode(name: str) -> RolloutMode:
    """The record of the mode ``name``; an unknown name is a one-line error listing the known ones."""
    mode = ROLLOUT_TABLE.get(name)
    if mode is None:
        raise ValueError(f"rollout: expected one of {', '.join(ROLLOUT_TABLE)}, got {name!r}")
    return mode


def register_rollout_mode(mode: RolloutMode) -> None:
    """Add a rollout mode (in-process: a plugin's module, a notebook, a test); its name becomes a value of the
    ``rollout`` setting. A taken name is refused."""
    if not isinstance(mode, RolloutMode):
        raise TypeError(f"mode: expected an rdpo_zoo.rollout_modes.RolloutMode, got {type(mode).__name__}")
    if mode.name in ROLLOUT_TABLE:
        raise ValueError(f"rollout mode {mode.name!r} is already registered")
    ROLLOUT_TABLE[mode.name] = mode


def unregister_rollout_mode(name: str) -> None:
    """Remove a rollout mode added by :func:`register_rollout_mode`."""
    rollout_mode(name)
    del ROLLOUT_TABLE[name]
