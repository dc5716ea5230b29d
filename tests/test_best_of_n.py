"""Step-wise best-of-N (RDPO Table 4) on a tiny random pipeline with a known reward."""

from rdpo_zoo.best_of_n import best_of_n
from rdpo_zoo.diffusion import DiffusionModel
from rdpo_zoo.plugins.estimators import DeltaQ, X0Hat
from tiny_pipelines import RedReward, tiny_sd_pipeline


def test_best_of_n_beats_plain_sampling_on_its_own_reward():
    model = DiffusionModel(tiny_sd_pipeline(), num_steps=4, guidance_scale=1.0)
    result = best_of_n(model, ["a", "b", "c"], RedReward(), {"x0-hat": X0Hat(), "delta-q": DeltaQ()}, n=4,
                       seeds=[0, 1], batch_size=6)
    rows = result["methods"]
    assert result["samples"] == 6 and set(rows) == {"plain", "x0-hat", "delta-q"}
    assert rows["plain"]["gain"]["mean"] == 0.0
    assert rows["x0-hat"]["gain"]["mean"] > 0  # choosing the best child by the reward's own x̂0 helps
    # With a shared x_t, ΔQ and x̂0 choose the same children: identical trajectories, identical rewards.
    assert rows["delta-q"]["mean"] == rows["x0-hat"]["mean"]
    # Cost: the first state's pass, then n children's passes at each later step (each reused when it continues);
    # the last step's children are final images and need none: 1 + n·(T − 1) against T for plain sampling.
    assert rows["plain"]["unet_calls_per_sample"] == 4
    assert rows["x0-hat"]["unet_calls_per_sample"] == 1 + 4 * 3
