"""Which parts of a method fit together: the checks a trainer runs before it builds anything (a rollout mode's
needs from its record in ``rdpo_zoo.rollout_modes``, the loss's kind by its type), and the choice of TailorPO-G's
gradient guidance. No torch here."""

from __future__ import annotations

import logging

from rdpo_zoo.rollout_modes import ROLLOUT_TABLE, rollout_mode

logger = logging.getLogger("rdpo_zoo.trainer")  # the run's log

__all__ = ["check_combination", "check_estimator_kind", "resolve_guidance"]


def resolve_guidance(method, reward, reward_spec: str) -> bool:
    """TailorPO-G's gradient guidance: explicit on/off, or auto (None): on for a branching rollout with a
    differentiable reward (RDPO = RDPO* + Ψ is built on TailorPO-G), else off. On where it cannot act is refused."""
    wanted, rollout = method.gradient_guidance, method.rollout
    branching, differentiable = rollout_mode(rollout).branching, reward.differentiable
    if wanted is None:
        guided = branching and differentiable
        logger.info("gradient guidance: auto -> %s (%s rollout, reward %r %s differentiable)",
                    "on" if guided else "off", rollout, reward_spec, "is" if differentiable else "is not")
        return guided
    if wanted and not branching:
        raise ValueError(f"gradient_guidance: TailorPO-G guidance moves the preferred child of a branching "
                         f"rollout; rollout {rollout!r} has none (pass --gradient-guidance false or auto)")
    if wanted and not differentiable:
        blocking = [n for n, _, r in getattr(reward, "parts", ()) if not r.differentiable]
        what = (f"part {blocking[0]!r} of {reward_spec!r}" if blocking else repr(reward_spec))
        raise ValueError(f"reward: {what} has no differentiable form, so it cannot drive the "
                         "gradient guidance this method uses (TailorPO-G); choose a differentiable reward or pass "
                         "--gradient-guidance false (or auto)")
    return bool(wanted)


def check_combination(method, registry) -> None:
    """Refuse a method whose parts do not fit together (before anything is built), naming the setting."""
    from rdpo_zoo.losses import PolicyGradientLoss

    m = method
    rollout, mode = m.rollout, rollout_mode(m.rollout)
    # the per-sample path is chosen by the loss's type, so a plugin's PolicyGradientLoss takes it too
    per_sample_loss = isinstance(registry.get("loss", m.loss).load(), PolicyGradientLoss)
    if mode.yields == "samples" and not per_sample_loss:
        raise ValueError(f"loss: rollout {rollout!r} (DDPO, GRPO) trains a per-sample policy-gradient loss (ppo-clip, "
                         f"grpo), not the pairwise {m.loss!r}")
    if mode.yields != "samples" and per_sample_loss:
        raise ValueError(f"loss: {m.loss!r} is a per-sample policy-gradient loss; it needs rollout 'single' (or "
                         f"another single-trajectory rollout), not {rollout!r}")
    if m.group_size > 1 and mode.yields != "samples":
        raise ValueError(f"group_size: groups of trajectories per prompt are a single-trajectory rollout's "
                         f"(GRPO); rollout {rollout!r} forms pairs")
    if mode.needs_estimator and m.estimator is None:
        raise ValueError(f"estimator: rollout {rollout!r} needs an estimator to label its pairs")
    if mode.needs_sampler and m.scheduler is None:
        raise ValueError(f"scheduler: rollout {rollout!r} samples chains, so it needs a sampler (ddim or ddpm)")
    if not mode.branching and m.estimator == "delta-q" and (m.estimator_options or {}).get(
            "variant") == "lookahead":
        raise ValueError(f"estimator: delta-q's lookahead variant needs a branching rollout, not {rollout!r}")
    if m.train_timesteps == "uniform" and mode.yields != "noised-pairs":
        raise ValueError(f"train_timesteps: 'uniform' (t ~ U, noised pairs) does not fit rollout {rollout!r}")
    if mode.yields == "noised-pairs" and m.estimator not in (None, "final-order"):
        raise ValueError("estimator: noised pairs are labelled by their final images: use final-order")
    if m.optimiser_step == "trajectory" and not mode.records_trajectory:
        recording = [name for name, other in ROLLOUT_TABLE.items() if other.records_trajectory]
        raise ValueError(f"optimiser_step: 'trajectory' steps once per trajectory, which only the rollouts "
                         f"{', '.join(recording)} record; rollout {rollout!r} does not")


def check_estimator_kind(method, estimator, pairwise: bool) -> None:
    """A pair rollout needs a step-pair estimator; a single-trajectory rollout a per-sample advantage (DDPO's)."""
    from rdpo_zoo.estimators import Estimator

    if pairwise and not isinstance(estimator, Estimator):
        raise ValueError(f"estimator: {method.estimator!r} scores single trajectories (rollout single, loss "
                         f"ppo-clip); rollout {method.rollout!r} needs a step-pair estimator such as delta-q, "
                         "x0-hat or final-order")
    if not pairwise and isinstance(estimator, Estimator):
        raise ValueError(f"estimator: {method.estimator!r} labels step pairs; rollout 'single' needs a "
                         "per-sample advantage estimator (advantage)")
