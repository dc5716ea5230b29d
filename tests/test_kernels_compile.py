"""The CUDA path compiles, without a GPU.

The interpreter accepts code the Triton compiler refuses, so the property suite alone cannot show that the kernels
build for a GPU. Triton compiles to PTX and cubin (its bundled ptxas) on any machine: this test drives the real
launchers and autograd functions — the exact arguments and specialisations a GPU run would see — through a fake
CUDA driver (``rdpo_zoo.kernels.fake_driver``) whose launches compile (``kernel.warmup``) instead of running, for
sm_80 and sm_90, and checks that the streaming kernels use 16-byte vector loads on contiguous rows.

It runs in a subprocess, since the conftest switches the interpreter on for this process.
"""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def _compile_everything(capability: int, full: bool) -> dict:
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import itertools

    import torch

    from rdpo_zoo.kernels import fake_driver

    fake_driver.install(capability)  # Triton's real compiler, the launch stubbed
    from rdpo_zoo.kernels import fused_loss as FL
    from rdpo_zoo.kernels import log_ratio as LR
    from rdpo_zoo.reference import check_paired_inputs

    compiled: dict[str, list[str]] = {}
    state = {"record": True}  # ragged shapes are compiled but left out of the vectorisation check

    class CompileOnly:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                kernel = self.fn.warmup(*args, grid=grid, **kwargs)
                if state["record"]:
                    compiled.setdefault(self.fn.__name__, []).append(kernel.asm["ptx"])

            return launch

    for module, name in ((LR, "_partials_kernel"), (LR, "_ratios_epilogue_kernel"), (LR, "_backward_kernel"),
                         (FL, "_preference_epilogue_kernel")):
        setattr(module, name, CompileOnly(getattr(module, name)))

    def make(layout, dtype, P=4, D=4096):
        ot_dtype = torch.bfloat16 if dtype == "mixed" else dtype
        lat_dtype = torch.float32 if dtype == "mixed" else dtype
        if layout == "shared":
            shapes = dict(y=(P, 2, D), x=(P, D), o=(P, D))
        else:
            shapes = dict(y=(P, 2, D), x=(P, 2, D), o=(P, 2, D))
        y = torch.randn(shapes["y"], dtype=lat_dtype)
        x = torch.randn(shapes["x"], dtype=lat_dtype)
        ot = torch.randn(shapes["o"], dtype=ot_dtype, requires_grad=True)
        orf = torch.randn(shapes["o"], dtype=ot_dtype)
        if layout == "noised":  # Diffusion-DPO: y = ε shared by stride 0, x_t not read
            y = torch.randn(P, D, dtype=lat_dtype).unsqueeze(1).expand(P, 2, D)
            x = None
        return y, x, ot, orf

    dtypes = [torch.float32, torch.bfloat16, "mixed", torch.float64] + ([torch.float16] if full else [])
    for layout, dtype in itertools.product(("shared", "per-branch", "noised"), dtypes):
        y, x, ot, orf = make(layout, dtype)
        a = 0.0 if x is None else 0.9
        spec = check_paired_inputs(y, x, ot, orf, a, -0.1, 0.05)
        with LR.force_launch_config(1024, 2048):
            r = LR.paired_log_ratios_triton(y, x, ot, orf, spec, "mean")
            r.backward(torch.ones_like(r))
    # one pair and one chunk (1-wide epilogue tiles), a ragged D that is no multiple of 16, a small block
    state["record"] = False
    for P, D, block in ((1, 100, 128), (3, 1, 128)):
        y, x, ot, orf = make("shared", torch.float32, P=P, D=D)
        spec = check_paired_inputs(y, x, ot, orf, 0.9, -0.1, 0.05)
        with LR.force_launch_config(block):
            value, _ = FL.preference_loss_triton(y, x, ot, orf, spec, "mean", 1, 1, True, 0.1, 1.0, None)
            value.backward()
    state["record"] = True
    # every gradient the backward can write, every layout flag
    for layout in ("shared", "per-branch"):
        y, x, ot, orf = make(layout, torch.float32)
        for t in (y, x, orf):
            t.requires_grad_(True)
        spec = check_paired_inputs(y, x, ot, orf, 0.9, -0.1, 0.05)
        with LR.force_launch_config(1024, 2048):
            r = LR.paired_log_ratios_triton(y, x, ot, orf, spec, "sum")
            r.backward(torch.ones_like(r))
    losses = list(FL.FUSED_LOSSES.values())
    penalties = [0] + list(FL.FUSED_PENALTIES.values())
    combos = itertools.product(losses, penalties, (True, False), (None, (-0.1, 0.1)))
    if not full:
        combos = [(1, 1, True, (-0.1, 0.1)), (2, 3, False, None), (3, 2, True, None), (1, 0, True, None)]
    for dtype in ((torch.float32, torch.float64) if full else (torch.float32,)):
        y, x, ot, orf = make("shared", dtype)
        spec = check_paired_inputs(y, x, ot, orf, 0.9, -0.1, 0.05)
        for loss_code, penalty_code, inside, bounds in combos:
            value, _ = FL.preference_loss_triton(y, x, ot, orf, spec, "mean", loss_code, penalty_code, inside, 0.1,
                                                 1.0, bounds)
            value.backward()
    # 16-byte accesses: v4 of 32-bit words (fp32, or 8 bf16/fp16), v2 of 64-bit words (fp64)
    wide = re.compile(r"\b(?:ld|st)\.global\.(?:v4\.b32|v2\.b64)")
    vector_loads = {name: all(any(m.group().startswith("ld") for m in wide.finditer(ptx)) for ptx in ptxs)
                    for name, ptxs in compiled.items()}
    vector_stores = {name: all(any(m.group().startswith("st") for m in wide.finditer(ptx)) for ptx in ptxs)
                     for name, ptxs in compiled.items()}
    # fmax/fmin drop NaN on the GPU (and in the interpreter, see test_kernels.py): the loss epilogue must use
    # NaN-keeping selects only, so that NaN inputs give NaN losses as in the reference
    nan_dropping = re.compile(r"\b(?:max|min)\.f(?:32|64)\b")
    drops_nan = {name: any(nan_dropping.search(ptx) for ptx in ptxs) for name, ptxs in compiled.items()}
    return {"counts": {k: len(v) for k, v in compiled.items()}, "vector_loads": vector_loads,
            "vector_stores": vector_stores, "drops_nan": drops_nan}


def _run(capability: int, full: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = f"import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); " \
           f"import test_kernels_compile as t; print(json.dumps(t._compile_everything({capability}, {full})))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check(result: dict) -> None:
    counts = result["counts"]
    for name in ("_partials_kernel", "_ratios_epilogue_kernel", "_backward_kernel", "_preference_epilogue_kernel"):
        assert counts.get(name, 0) > 0, (name, counts)
    # contiguous rows stream with 16-byte loads; gradients are written with 16-byte stores
    assert result["vector_loads"]["_partials_kernel"], result
    assert result["vector_loads"]["_backward_kernel"], result
    assert result["vector_stores"]["_backward_kernel"], result
    assert not any(result["drops_nan"].values()), result


def test_kernels_compile_for_sm90():
    _check(_run(90, full=False))


@pytest.mark.slow
@pytest.mark.parametrize("capability", [80, 90])
def test_kernels_compile_every_variant(capability):
    _check(_run(capability, full=True))
