"""Built-in estimators: which branch of a step pair is preferred. Implementations in
``rdpo_zoo.plugins.step_estimators``; this module only names them (no torch import)."""

from __future__ import annotations

import rdpo_zoo
from rdpo_zoo import EstimatorPart, Option


@rdpo_zoo.hookimpl
def register_estimators(register):
    register(EstimatorPart(
        "final-order", "label every step by the final images' rewards (D3PO's Assumption 1, Diffusion-DPO)",
        "rdpo_zoo.plugins.step_estimators:FinalOrder",
    ))
    register(EstimatorPart(
        "x0-hat", "a child's value is r(c, x̂0(x_{t-1})), the reward of its one-step prediction (Eq. 5; SPO, TailorPO)",
        "rdpo_zoo.plugins.step_estimators:X0Hat",
    ))
    register(EstimatorPart(
        "delta-q", "RDPO's ΔQ: r(c, x̂0(x_{t-1})) − r(c, x̂0(x_t)), the change of the Q-value over the step (Eq. 6)",
        "rdpo_zoo.plugins.step_estimators:DeltaQ",
        options=(
            Option("variant", str, "change", "change: ΔQ; improvement: drop groups where no child improves; "
                   "lookahead: Q(x_{t-2}) − Q(x_{t-1}) (Algorithm 1's indexing)",
                   choices=("change", "improvement", "lookahead")),
            Option("sign", str, "after-minus-before", "after − before (the text) or before − after (as printed)",
                   choices=("after-minus-before", "before-minus-after")),
        ),
    ))
