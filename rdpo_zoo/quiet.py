"""Loading a pipeline without the known harmless warnings, filtered where they arise and nowhere else.

Each filter drops one message, by its logger and text, for the duration of one load; every other warning of that
logger still shows, and nothing is silenced globally.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import re
from typing import Iterator

__all__ = ["quiet_loading", "HARMLESS"]

#: (logger, message pattern, why it is harmless here)
HARMLESS = (
    ("transformers.utils.import_utils", r"requires torchvision \(not installed\); falling back to",
     "no torchvision can be installed beside the CPU torch (ENV-NOTES); the PIL image processors are used instead"),
    ("diffusers.models.modeling_utils", r"should be kept in float32: \[\]",
     "an empty list: the model has no module that must stay in float32"),
    ("diffusers.loaders.lora_base", r"No LoRA keys associated to CLIPTextModel",
     "rdpo-zoo trains the UNet only: its LoRA files have no text-encoder keys by design"),
    ("diffusers.loaders.peft", r"No LoRA keys associated to CLIPTextModel",
     "as above (the same message from diffusers' peft loader)"),
)


class _DropMatching(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Drop :data:`HARMLESS` messages and hide diffusers' and transformers' loading bars, for this block only."""
    installed = []
    for name, pattern, _ in HARMLESS:
        logger, drop = logging.getLogger(name), _DropMatching(pattern)
        logger.addFilter(drop)
        installed.append((logger, drop))
    bars = []
    for module in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            lib = importlib.import_module(module)
        except ImportError:
            continue
        bars.append((lib, lib.is_progress_bar_enabled()))
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for logger, drop in installed:
            logger.removeFilter(drop)
        for lib, was_on in bars:
            if was_on:
                lib.enable_progress_bar()
