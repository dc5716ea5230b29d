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

#: The one learning rate of every method, chosen by the lr pilot (``python -m benchmarks.paper lr-pilot``).
LEARNING_RATE = 1e-3


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
    ),
    "full": Profile(
        "full", budget=6000, seeds=(0, 1, 2), eval_sets={"ood": 18, "train": 18}, eval_seeds=(0, 1),
        probe_prompts=4, run=SHARED_RUN, bon_n=(8, 32), bon_prompts=18, bon_seeds=(0,),
        pilot_lrs=(3e-4, 1e-3, 3e-3), pilot_budget=3000,
    ),
}
