"""The plugin's own tests: register it in-process in a fresh registry, then use its parts by name."""

import torch

import rdpo_zoo
import rdpo_zoo_example_plugin


def test_loss_and_reward_by_name():
    with rdpo_zoo.temporary_registry(plugins="none"):
        rdpo_zoo.register(rdpo_zoo_example_plugin)

        objective = rdpo_zoo.build_loss("dpo-margin", {"beta": "1.0", "margin": "0.5"})
        log_ratios = torch.tensor([[0.5, 0.0]])  # z = 1·(0.5 − 0) = 0.5 = γ
        assert torch.allclose(objective(log_ratios), torch.log(torch.tensor([2.0])))

        reward = rdpo_zoo.get_part("reward", "saturation").build({"measure": "chroma"})
        red, grey = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
        red[:, 0] = 1.0
        assert reward(torch.cat([red, grey]), ["a", "b"]).tolist() == [1.0, 0.0]
