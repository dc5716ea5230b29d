"""The built-in model parts load real diffusers pipelines from local folders (tiny ones built from configs, saved
to a temporary folder: no download). Slow: importing diffusers alone takes seconds."""

from __future__ import annotations

import pytest

from rdpo_zoo.registry import Registry

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("part, builder, cls", [
    ("sd15", "tiny_sd_pipeline", "StableDiffusionPipeline"),
    ("sdxl", "tiny_sdxl_pipeline", "StableDiffusionXLPipeline"),
])
def test_model_parts_load_local_pipelines(tmp_path, part, builder, cls):
    import torch

    import tiny_pipelines

    getattr(tiny_pipelines, builder)().save_pretrained(tmp_path)
    registry = Registry(plugins="builtin")
    pipe = registry.get("model", part).build({"id": str(tmp_path), "dtype": "float16"})
    assert type(pipe).__name__ == cls and pipe.unet.dtype == torch.float16
    generic = registry.get("model", "diffusers").build({"id": str(tmp_path)})
    assert type(generic).__name__ == cls and generic.unet.dtype == torch.float32
    if part == "sd15":
        assert pipe.safety_checker is None
