"""The two profiles of the study: ``quick`` (a smoke test: minutes for every claim) and ``full`` (about 90 s of
training per run on one CPU thread of the 2-core development machine).

The budget is in UNet sample-evaluations (rollout and training forward passes; a classifier-free-guidance pair
counts 2), the unit ``DiffusionModel.unet_calls`` counts. One number for every method: each trains until its
running total reaches it (see ``runs.py``). On the development CPU one evaluation of the embedded tiny UNet costs
about 8–10 ms in these batches (measured: D3PO 960 evaluations in 9.5 s per iteration of 4 prompts; RDPO's
iteration costs more wall time per evaluation because of TailorPO-G's reward gradient through the VAE decoder).

The learning rate is one value for every method (the papers' SD-1.5 values, 3e-5 … 3e-4, move a rank-4 LoRA of the
tiny UNet by almost nothing in a budget of this size); it comes from the ``lr-pilot`` claim (see docs/reproduction.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

#: The one learning rate of every method, chosen by the lr pilot (``python -m benchmarks.paper lr-pilot``).
LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class LongHorizon:
    """The long-horizon claim (issue 16): RDPO* driven into its failure, then the arms in that setting, each run
    evaluated on fixed held-out validation and test sets every ``checkpoint_every`` iterations."""

    iterations: int
    checkpoint_every: int
    #: name -> {"set": prompt set, "prompts": how many (spread over it), "seeds": sampling seeds (its noise),
    #: "pair_prompts": prompts whose pairs (the method's own rollout) give r_w, r_l, Ψ active …}
    heldout: dict
    lrs: tuple  # tier 0: RDPO*'s grid, least aggressive first; the first setting that degrades is "the setting"
    guidance_steps: tuple
    tiers: tuple  # which of the tiers 1–5 this profile includes
    seeds: tuple  # tier 1
    seeds_more: tuple  # tiers 2–4
    ratios: tuple = (1.0, 2.0)  # tier 1: λ/β
    ratios_more: tuple = (0.5, 5.0)  # tier 2: λ/β, beside the paper's absolute λ
    lambdas_paper: tuple = (100.0, 10000.0)  # tier 2: absolute λ
    confirm_seeds: tuple = ()  # fresh training seeds on which the best λ/β is confirmed


def _heldout(prompts: int, seeds: int, pair_prompts: int) -> dict:
    """Validation and test: the same OOD prompts under different noise (sampling seeds 1000…, 2000…)."""
    return {name: {"set": "ood", "prompts": prompts, "seeds": [base + i for i in range(seeds)],
                   "pair_prompts": pair_prompts} for name, base in (("validation", 1000), ("test", 2000))}


@dataclass(frozen=True)
class Profile:
    name: str
    budget: int  # UNet sample-evaluations per training run
    seeds: tuple  # training seeds of the multi-seed tables (Tables 1, 3)
    eval_sets: dict = field(default_factory=dict)  # prompt set -> number of prompts (spread over the set)
    eval_seeds: tuple = (0,)
    probe_prompts: int = 2  # prompts of the fixed reference pairs
    run: dict = field(default_factory=dict)  # RunSettings overrides shared by every run
    bon_n: tuple = (8,)
    bon_prompts: int = 2
    bon_seeds: tuple = (0,)
    pilot_lrs: tuple = (1e-3, 3e-3, 1e-2)
    pilot_budget: int = 1000
    learning_rate: float = LEARNING_RATE
    long: Optional[LongHorizon] = None


SHARED_RUN = {"prompts_per_iteration": 4, "minibatch_size": 8}

PROFILES = {
    "quick": Profile(
        "quick", budget=1000, seeds=(0,), eval_sets={"ood": 6, "train": 6}, eval_seeds=(0,), probe_prompts=2,
        run=SHARED_RUN, bon_n=(8,), bon_prompts=2, bon_seeds=(0,), pilot_lrs=(3e-3,), pilot_budget=500,
    ),
    # The CI's end-to-end test (tests/test_paper.py) on the test model part: seconds, not a measurement.
    "ci": Profile(
        "ci", budget=150, seeds=(0,), eval_sets={"ood": 2, "train": 2}, eval_seeds=(0,), probe_prompts=1,
        run={"prompts_per_iteration": 2, "minibatch_size": 8}, bon_n=(2,), bon_prompts=1, bon_seeds=(0,),
        pilot_lrs=(3e-3,), pilot_budget=100,
        long=LongHorizon(iterations=1, checkpoint_every=1, heldout=_heldout(2, 2, 1), lrs=(3e-3,),
                         guidance_steps=(0.2,), tiers=(1,), seeds=(0, 1), seeds_more=(0,), ratios=(1.0,)),
    ),
    "full": Profile(
        "full", budget=6000, seeds=(0, 1, 2), eval_sets={"ood": 18, "train": 18}, eval_seeds=(0, 1),
        probe_prompts=4, run=SHARED_RUN, bon_n=(8, 32), bon_prompts=18, bon_seeds=(0,),
        pilot_lrs=(3e-4, 1e-3, 3e-3), pilot_budget=3000,
        # 16 OOD prompts × 4 seeds = 64 prompt/seed pairs per held-out set; pairs of the method's own rollout on 8
        long=LongHorizon(iterations=150, checkpoint_every=10, heldout=_heldout(16, 4, 8), lrs=(2e-3, 3e-3),
                         guidance_steps=(0.1, 0.2), tiers=(1, 2, 3, 4, 5), seeds=(0, 1, 2, 3, 4),
                         seeds_more=(0, 1, 2), confirm_seeds=(5, 6, 7)),
    ),
}
