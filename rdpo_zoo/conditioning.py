"""Text conditioning of a batch (what a model family's ``encode`` returns) and the host-to-device copy it uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

__all__ = ["Conditioning", "host_to_device"]


def host_to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """``tensor`` (a host tensor: an index, a few coefficients) on ``device`` without a device sync: a blocking
    host-to-device copy synchronises the stream, so the copy is non-blocking, from pinned memory on CUDA (the
    caching host allocator keeps the block until the copy is done)."""
    device = torch.device(device)
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)



@dataclass
class Conditioning:
    """Text conditioning of B samples: conditional and unconditional embeddings (and SDXL's added conditions)."""

    prompts: list[str]
    cond: torch.Tensor  # [B, L, E]
    uncond: torch.Tensor  # [B, L, E]
    added_cond: dict[str, torch.Tensor] = field(default_factory=dict)  # SDXL: text_embeds, time_ids (cond)
    added_uncond: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.cond.shape[0]

    def index(self, index: torch.Tensor | Sequence[int]) -> "Conditioning":
        index = torch.as_tensor(index, dtype=torch.long)
        moved = {}

        def pick(t):  # the index goes to each device once, without a sync
            if t.device not in moved:
                moved[t.device] = host_to_device(index, t.device)
            return t[moved[t.device]]

        return Conditioning(
            [self.prompts[i] for i in index.tolist()], pick(self.cond), pick(self.uncond),
            {k: pick(v) for k, v in self.added_cond.items()}, {k: pick(v) for k, v in self.added_uncond.items()},
        )

    def repeat_interleave(self, n: int) -> "Conditioning":
        return self.index(torch.arange(len(self)).repeat_interleave(n))

    @staticmethod
    def cat(parts: Sequence["Conditioning"]) -> "Conditioning":
        return Conditioning(
            [p for part in parts for p in part.prompts],
            torch.cat([p.cond for p in parts]), torch.cat([p.uncond for p in parts]),
            {k: torch.cat([p.added_cond[k] for p in parts]) for k in parts[0].added_cond},
            {k: torch.cat([p.added_uncond[k] for p in parts]) for k in parts[0].added_uncond},
        )

    def to(self, device) -> "Conditioning":
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return Conditioning(self.prompts, self.cond.to(device), self.uncond.to(device), move(self.added_cond),
                            move(self.added_uncond))
