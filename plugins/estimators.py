"""Built-in estimators: which branch of a step pair is preferred.

Notation: Q(x) = r(c, x̂0(x)), the reward of the one-step prediction of state x (Eq. 5 of the RDPO paper, the
step reward of SPO/TailorPO, "Assumption 2"). See ``rdpo_zoo.estimators`` for what a rollout measures. The module
imports no torch (the estimators only use tensor methods), so registering it stays cheap.
"""

from __future__ import annotations

import rdpo_zoo
from rdpo_zoo import EstimatorPart, Option
from rdpo_zoo.estimators import Estimator, StepMeasurements

__all__ = ["FinalOrder", "X0Hat", "DeltaQ"]


class FinalOrder(Estimator):
    """``final-order`` (D3PO's "Assumption 1", Diffusion-DPO): every step of a trajectory is labelled by the
    reward of that trajectory's final image. Ties (or gaps below the rollout's threshold) give no pair. Free for
    trajectory pairs; a branching rollout must complete every candidate to x_0 (cost: k·(steps left) UNet passes
    per chosen step)."""

    name = "final-order"
    needs_children = False
    needs_final = True

    def values(self, m: StepMeasurements):
        return m.final


class X0Hat(Estimator):
    """``x0-hat`` (Eq. 5; SPO, TailorPO): the value of a candidate x_{t-1} is Q(x_{t-1}) = r(c, x̂0(x_{t-1})),
    scored with the candidate's timestep when the reward accepts one (a step-aware preference model, as SPO's,
    serves this way)."""

    name = "x0-hat"

    def values(self, m: StepMeasurements):
        return m.q_children


class DeltaQ(Estimator):
    """``delta-q`` (Eq. 6, RDPO): the reward of the transition x_t → x_{t-1} is the change of the Q-value,

        r*(x_t → x_{t-1}) = Q(x_{t-1}) − Q(x_t)          (sign="after-minus-before", the default)

    The paper prints the difference as before − after while its text calls it "the expected reward change"; the
    printed order (``sign="before-minus-after"``) would prefer the child whose prediction got *worse*, so it is
    kept only as an option, for the record.

    When both candidates share x_t (branching rollouts), Q(x_t) cancels between them: the labels, the gap and
    the guidance gradient are exactly those of ``x0-hat``; only the values differ (their sign says whether a child
    improved on its parent). With per-branch x_t (trajectory pairs) the two estimators differ. ``variant`` offers
    the readings under which ΔQ matters with a shared x_t:

    - ``change`` (default): the values above;
    - ``improvement``: the same values, but a group is kept only if at least one candidate improved on its parent
      (max ΔQ > 0), i.e. the sign of ΔQ is used to drop pairs where neither child improves;
    - ``lookahead``: Algorithm 1's indexing, r*(x_{t-1}) = Q(x_{t-2}) − Q(x_{t-1}), the change over a one-step
      look-ahead sampled from each candidate (costs one more guided pass per candidate; branching rollouts only).
    """

    name = "delta-q"
    VARIANTS = ("change", "improvement", "lookahead")
    SIGNS = ("after-minus-before", "before-minus-after")

    def __init__(self, variant: str = "change", sign: str = "after-minus-before"):
        if variant not in self.VARIANTS:
            raise ValueError(f"variant: expected one of {self.VARIANTS}, got {variant!r}")
        if sign not in self.SIGNS:
            raise ValueError(f"sign: expected one of {self.SIGNS}, got {sign!r}")
        self.variant, self.sign = variant, sign
        self.needs_lookahead = variant == "lookahead"
        self.needs_parent = variant != "lookahead"

    def values(self, m: StepMeasurements):
        if self.variant == "lookahead":
            after, before = m.q_lookahead, m.q_children
        else:
            parent = m.q_parent if m.q_parent.dim() == 2 else m.q_parent.unsqueeze(1)
            after, before = m.q_children, parent
        change = after - before
        return change if self.sign == "after-minus-before" else -change

    def keep(self, values, m: StepMeasurements):
        if self.variant != "improvement":
            return None
        improvement = values if self.sign == "after-minus-before" else -values
        return improvement.max(1).values > 0



@rdpo_zoo.hookimpl
def register_estimators(register):
    register(EstimatorPart(
        "final-order", "label every step by the final images' rewards (D3PO's Assumption 1, Diffusion-DPO)",
        "rdpo_zoo.plugins.estimators:FinalOrder",
    ))
    register(EstimatorPart(
        "x0-hat", "a child's value is r(c, x̂0(x_{t-1})), the reward of its one-step prediction (Eq. 5; SPO, TailorPO)",
        "rdpo_zoo.plugins.estimators:X0Hat",
    ))
    register(EstimatorPart(
        "delta-q", "RDPO's ΔQ: r(c, x̂0(x_{t-1})) − r(c, x̂0(x_t)), the change of the Q-value over the step (Eq. 6)",
        "rdpo_zoo.plugins.estimators:DeltaQ",
        options=(
            Option("variant", str, "change", "change: ΔQ; improvement: drop groups where no child improves; "
                   "lookahead: Q(x_{t-2}) − Q(x_{t-1}) (Algorithm 1's indexing)",
                   choices=("change", "improvement", "lookahead")),
            Option("sign", str, "after-minus-before", "after − before (the text) or before − after (as printed)",
                   choices=("after-minus-before", "before-minus-after")),
        ),
    ))
