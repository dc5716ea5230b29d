"""Property tests of the fused kernels (``rdpo_zoo.kernels``, Triton under ``TRITON_INTERPRET=1``) against the
reference maths (``rdpo_zoo.reference`` + ``rdpo_zoo.losses``), which define correctness.

Tolerances (stated once, used everywhere; every comparison is against a float64 run of the reference on the same
input values, upcast):

- log-ratios r (fp32 accumulation): |Δr| ≤ 1e-5·A, A = s·|b|·Σ_d (|o_θ| + |o_ref|)·(2|y| + 2|a||x_t| + |b|(|o_θ| +
  |o_ref|)) — the magnitude of the summed terms' parts, i.e. the condition of the sum (fp32 cannot do better
  than ~1e-7·A); float64 inputs: 1e-12·A.
- gradients, in the input's dtype: |Δg| ≤ rtol·|g| + 1e-5·G (fp64: 1e-12·G), G the same bound for the gradient's
  terms, rtol the rounding of the stored gradient: fp32 1e-6, bf16 1e-2 (the interpreter truncates fp32 → bf16:
  up to one ulp, 2⁻⁷), fp16 2e-3 (+6e-8 absolute: subnormals), fp64 1e-12.
- losses in float64: 1e-10 relative (and β up to 1e4, λ up to 1e3). Losses from low-precision inputs: the loss
  and its dL/dr are checked at the kernel's own r (returned with ``return_log_ratios``), since the loss amplifies
  the (bounded, tested) error of r by β: loss 1e-5 relative, gradients as above.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rdpo_zoo import kernels as K
from rdpo_zoo import losses as L
from rdpo_zoo import reference as R

pytest.importorskip("triton")
from rdpo_zoo.kernels.log_ratio import force_launch_config, is_interpreted  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not is_interpreted() and not torch.cuda.is_available(),
                       reason="Triton needs a GPU or TRITON_INTERPRET=1 (set by conftest)"),
    # numpy's overflow/invalid warnings from the interpreter evaluating both sides of a tl.where
    pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning"),
]

DEVICE = "cuda" if (torch.cuda.is_available() and not is_interpreted()) else "cpu"
LOW = (torch.float32, torch.bfloat16, torch.float16)
GRAD_RTOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}
GRAD_ATOL = {torch.float64: 0.0, torch.float32: 0.0, torch.bfloat16: 0.0, torch.float16: 6e-8}
LOSSES = ("dpo", "ipo", "hinge")
PENALTIES = (None, "psi", "psi-literal", "dpop")
NAMES = ("y", "x_t", "o_theta", "o_ref")


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One call's inputs. ``leaves`` are what gradients are taken with respect to (a stride-0 view's base)."""

    tensors: dict  # name -> tensor passed to the op (None for x_t when a = 0 and it is left out)
    leaves: dict  # name -> leaf tensor (requires grad) or None
    a: object
    b: object
    sigma: object
    reduction: str

    def args(self):
        t = self.tensors
        return (t["y"], t["x_t"], t["o_theta"], t["o_ref"], self.a, self.b, self.sigma)

    def args64(self):
        """The same values in float64 on the CPU, for the reference run (differentiable to the float64 leaves)."""
        leaves64 = {n: (None if v is None else v.detach().double().cpu().requires_grad_(v.requires_grad))
                    for n, v in self.leaves.items()}
        out = []
        for n in NAMES:
            t = self.tensors[n]
            if t is None:
                out.append(None)
                continue
            leaf = leaves64[n]
            if leaf is not None and t.shape != leaf.shape:  # a stride-0 expansion of its leaf
                out.append(leaf.unsqueeze(1).expand(t.shape))
            elif leaf is not None:
                out.append(leaf)
            else:
                out.append(t.detach().double().cpu())
        coef = [c.double().cpu() if isinstance(c, torch.Tensor) else c for c in (self.a, self.b, self.sigma)]
        return tuple(out) + tuple(coef), leaves64


def _layout(t: torch.Tensor, how: str) -> torch.Tensor:
    """The same values in another memory layout: contiguous, strided along D, or reversed (column-major)."""
    if how == "strided":
        base = torch.zeros(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype, device=t.device)
        base[..., ::2] = t
        return base[..., ::2]
    if how == "reversed":
        dims = tuple(reversed(range(t.dim())))
        return t.permute(dims).contiguous().permute(dims)
    return t


def make_case(seed: int, P: int, D: int, shared: dict, dtypes: dict, layouts: dict, grads: dict, *,
              reduction="mean", a_zero=False, drop_x=False, expand_y=False, coef_tensors=True, scale=1.0,
              sigma_range=(0.05, 2.0)) -> Case:
    g = torch.Generator().manual_seed(seed)

    def randn(shape, s=1.0):
        return torch.randn(shape, generator=g, dtype=torch.float64) * s

    tensors, leaves = {}, {}
    base_o = randn((P, D), scale)
    for name in NAMES:
        if name == "x_t" and drop_x:
            tensors[name], leaves[name] = None, None
            continue
        is_shared = shared[name]
        shape = (P, D) if is_shared else (P, 2, D)
        if name == "o_theta":
            value = randn(shape, scale)
        elif name == "o_ref":  # near o_theta, as a LoRA policy is near its base
            value = (base_o if is_shared else base_o.unsqueeze(1).expand(P, 2, D)) + randn(shape, 0.3 * scale)
        else:
            value = randn(shape)
        value = value.to(dtypes[name])
        if name == "y" and expand_y and is_shared:  # Diffusion-DPO's ε: [P, 2, D] with stride 0 on the branch
            leaf = _layout(value.to(DEVICE), layouts[name]).detach().requires_grad_(grads[name])
            tensors[name], leaves[name] = leaf.unsqueeze(1).expand(P, 2, D), leaf if grads[name] else None
            continue
        t = _layout(value.to(DEVICE), layouts[name]).detach().requires_grad_(grads[name])
        tensors[name], leaves[name] = t, t if grads[name] else None
    lo, hi = sigma_range
    a = 0.0 if (a_zero or drop_x) else (0.5 + torch.rand(P, generator=g, dtype=torch.float64) * 0.7)
    b = (torch.rand(P, generator=g, dtype=torch.float64) + 0.1) * torch.where(
        torch.rand(P, generator=g) < 0.5, -1.0, 1.0).double()
    sigma = lo * (hi / lo) ** torch.rand(P, generator=g, dtype=torch.float64)
    if not coef_tensors:
        a, b, sigma = (float(c[0]) if isinstance(c, torch.Tensor) else c for c in (a, b, sigma))
    else:
        a, b, sigma = (c.float() if isinstance(c, torch.Tensor) else c for c in (a, b, sigma))
    return Case(tensors, leaves, a, b, sigma, reduction)


@st.composite
def cases(draw, dtypes=LOW, max_P=4, max_D=200, scales=(1e-2, 1.0, 30.0)):
    P = draw(st.integers(1, max_P))
    D = draw(st.integers(1, max_D))
    kind = draw(st.sampled_from(["shared", "per-branch", "noised", "any"]))
    if kind == "shared":  # TailorPO/SPO/RDPO: one x_t, one network pass
        shared = dict(y=False, x_t=True, o_theta=True, o_ref=True)
    elif kind == "per-branch":  # D3PO
        shared = dict(y=False, x_t=False, o_theta=False, o_ref=False)
    elif kind == "noised":  # Diffusion-DPO: ε shared, x_t and o per branch
        shared = dict(y=True, x_t=False, o_theta=False, o_ref=False)
    else:
        shared = {n: draw(st.booleans()) for n in NAMES}
    dt = {n: draw(st.sampled_from(dtypes)) for n in NAMES}
    layouts = {n: draw(st.sampled_from(["contiguous", "contiguous", "strided", "reversed"])) for n in NAMES}
    grads = {n: (n == "o_theta") or draw(st.booleans()) for n in NAMES}
    drop_x = kind == "noised" and draw(st.booleans())
    # the interpreter costs ~15 ms per program and loop iteration: mostly one of each per pair; test_edge_shapes
    # covers many chunks and ragged tails
    config = draw(st.sampled_from([None, None, (32, None), (64, 128)]))
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)), P=P, D=D, shared=shared, dtypes=dt, layouts=layouts, grads=grads,
        reduction=draw(st.sampled_from(["mean", "sum"])), drop_x=drop_x, expand_y=kind == "noised",
        a_zero=kind == "noised", coef_tensors=draw(st.booleans()), scale=draw(st.sampled_from(scales)),
    ), config


def _config(config):
    return force_launch_config(*config) if config is not None else _Null()


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ----------------------------------------------------------------------------------------------------------------
# Bounds and comparisons
# ----------------------------------------------------------------------------------------------------------------


def _branches(t: Optional[torch.Tensor], P: int, D: int) -> torch.Tensor:
    if t is None:
        return torch.zeros(P, 2, D, dtype=torch.float64)
    t = t.detach().double().cpu()
    return t.unsqueeze(1).expand(P, 2, D) if t.dim() == 2 else t


def _scales(case: Case, P: int, D: int):
    coef = []
    for c in (case.a, case.b, case.sigma):
        c = c.double().cpu() if isinstance(c, torch.Tensor) else torch.tensor(float(c), dtype=torch.float64)
        coef.append(c.reshape(-1).expand(P).reshape(P, 1, 1))
    a, b, sigma = coef
    s = 1.0 / (2 * sigma**2)
    if case.reduction == "mean":
        s = s / D
    return a, b, s


def ratio_magnitude(case: Case) -> torch.Tensor:
    """A [P, 2]: the scale of the terms summed into r (see the module docstring)."""
    y = case.tensors["y"]
    P, D = y.shape[0], y.shape[-1]
    yb, xb, ot, orf = (_branches(case.tensors[n], P, D) for n in NAMES)
    a, b, s = _scales(case, P, D)
    o = ot.abs() + orf.abs()
    return (s.abs() * b.abs() * (o * (2 * yb.abs() + 2 * a.abs() * xb.abs() + b.abs() * o))).sum(-1)


def grad_magnitudes(case: Case, c: torch.Tensor) -> dict:
    """Elementwise bounds G of each leaf's gradient terms for upstream dL/dr = c [P, 2]."""
    y = case.tensors["y"]
    P, D = y.shape[0], y.shape[-1]
    yb, xb, ot, orf = (_branches(case.tensors[n], P, D) for n in NAMES)
    a, b, s = _scales(case, P, D)
    k = 2 * s.abs() * b.abs() * c.detach().double().cpu().abs().unsqueeze(-1)
    t = yb.abs() + a.abs() * xb.abs()
    per_branch = {
        "o_theta": k * (t + b.abs() * ot.abs()),
        "o_ref": k * (t + b.abs() * orf.abs()),
        "y": k * (ot.abs() + orf.abs()),
        "x_t": a.abs() * k * (ot.abs() + orf.abs()),
    }
    out = {}
    for n, leaf in case.leaves.items():
        if leaf is not None:
            out[n] = per_branch[n].sum(1) if leaf.dim() == 2 else per_branch[n]
    return out


def assert_close(name, got, want, tol):
    """|got − want| ≤ tol elementwise, with NaN where (and only where) the reference has NaN; names the first
    offending index."""
    got = got.detach().double().cpu()
    want = want.detach().double().cpu()
    tol = torch.as_tensor(tol, dtype=torch.float64).cpu().expand_as(want)  # a tolerance built on the GPU too
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    nan_got, nan_want = torch.isnan(got), torch.isnan(want)
    if not torch.equal(nan_got, nan_want):
        idx = (nan_got != nan_want).nonzero()[0].tolist()
        raise AssertionError(f"{name}: NaN mismatch at {idx}: got {got[tuple(idx)]}, want {want[tuple(idx)]}")
    finite = ~nan_want
    inf_ok = torch.isinf(want) & (got == want)
    err = (got - want).abs()
    bad = finite & ~inf_ok & ~(err <= tol)
    if bool(bad.any()):
        idx = bad.nonzero()[0].tolist()
        i = tuple(idx)
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {want.numel()} elements off; first at {idx}: got {float(got[i])!r}, "
            f"want {float(want[i])!r}, |Δ| = {float(err[i]):.3g} > tol {float(tol[i]):.3g}"
        )


def check_grads(case: Case, got: dict, want: dict, c: torch.Tensor, acc_rtol: float):
    bounds = grad_magnitudes(case, c)
    for n, leaf in case.leaves.items():
        if leaf is None:
            continue
        dtype = leaf.dtype
        # a stride-0 expansion's gradient is rounded per branch, then summed by autograd (which may cancel)
        expanded = case.tensors[n].dim() != leaf.dim()
        rounded = bounds[n] if expanded else want[n].detach().abs().cpu().double()
        tol = GRAD_RTOL[dtype] * rounded + acc_rtol * bounds[n] + GRAD_ATOL[dtype]
        assert got[n].dtype == dtype and got[n].shape == leaf.shape, n
        # beyond the dtype's range the stored gradient is ±inf, as the reference's would be
        w = want[n].detach().cpu().double()
        w = torch.where(torch.isinf(w.to(dtype)), w.to(dtype).double(), w)
        assert_close(f"d/d{n}", got[n], w, tol)


def _grads(output, case_leaves, grad_output=None):
    names = [n for n, v in case_leaves.items() if v is not None]
    grads = torch.autograd.grad(output, [case_leaves[n] for n in names], grad_output)
    return dict(zip(names, grads))


def _acc_rtol(case: Case) -> float:
    return 1e-12 if any(t is not None and t.dtype == torch.float64 for t in case.tensors.values()) else 1e-5


# ----------------------------------------------------------------------------------------------------------------
# paired_log_ratios: values and gradients
# ----------------------------------------------------------------------------------------------------------------


def _check_log_ratios(params, config):
    case = make_case(**params)
    with _config(config):
        r = K.paired_log_ratios(*case.args(), reduction=case.reduction, backend="triton")
    args64, leaves64 = case.args64()
    r_ref = R.paired_log_ratios(*args64, reduction=case.reduction)
    acc = _acc_rtol(case)
    expected_dtype = torch.float64 if acc < 1e-6 else torch.float32
    assert r.dtype == expected_dtype and r.shape == (case.tensors["y"].shape[0], 2)
    assert_close("r", r, r_ref, acc * ratio_magnitude(case) + 1e-300)
    # gradients for a random upstream dL/dr
    upstream = torch.randn(r.shape, generator=torch.Generator().manual_seed(params["seed"] + 1), dtype=torch.float64)
    with _config(config):
        got = _grads(r, case.leaves, upstream.to(r.dtype).to(r.device))
    want = _grads(r_ref, leaves64, upstream)
    check_grads(case, got, want, upstream, acc)


@given(cases())
def test_log_ratios_match_reference(drawn):
    _check_log_ratios(*drawn)


@given(cases(dtypes=(torch.float64,), scales=(1e-3, 1.0, 1e3)))
def test_log_ratios_match_reference_float64(drawn):
    _check_log_ratios(*drawn)


# ----------------------------------------------------------------------------------------------------------------
# preference_loss: every fused loss and penalty, both placements, the clamp, β and λ across orders of magnitude
# ----------------------------------------------------------------------------------------------------------------


@st.composite
def loss_options(draw):
    loss = draw(st.sampled_from(LOSSES + ("d3po", "rdpo")))
    penalty = None if loss == "rdpo" else draw(st.sampled_from(PENALTIES))
    return dict(
        loss=loss, penalty=penalty,
        beta=10.0 ** draw(st.floats(-3, 4)),
        psi_lambda=draw(st.sampled_from([0.0, 10.0 ** draw(st.floats(-3, 3))])),
        placement=draw(st.sampled_from(["inside", "outside"])),
        clamp_eps=draw(st.sampled_from([None, 0.1, 10.0 ** draw(st.floats(-4, -0.05))])),
    )


def _reference_loss(case: Case, opts, args=None):
    args = args if args is not None else case.args64()[0]
    r = R.paired_log_ratios(*args, reduction=case.reduction)
    return L.preference_loss(r, opts["loss"], opts["beta"], penalty=opts["penalty"], psi_lambda=opts["psi_lambda"],
                             placement=opts["placement"], clamp_eps=opts["clamp_eps"]), r


@given(cases(dtypes=(torch.float64,), max_D=64, scales=(1e-3, 1.0, 1e3)), loss_options())
def test_preference_loss_float64(drawn, opts):
    params, config = drawn
    case = make_case(**params)
    with _config(config):
        value, r = K.preference_loss(*case.args(), reduction=case.reduction, backend="triton",
                                     return_log_ratios=True, **opts)
    args64, leaves64 = case.args64()
    want, r_ref = _reference_loss(case, opts, args64)
    assert value.dim() == 0 and value.dtype == torch.float64 and not r.requires_grad
    assert_close("r", r, r_ref, 1e-12 * ratio_magnitude(case) + 1e-300)
    assert_close("loss", value, want, 1e-10 * want.detach().abs() + 1e-300)
    with _config(config):
        got = _grads(value, case.leaves)
    want_grads = _grads(want, leaves64)
    for n in want_grads:
        g = want_grads[n].detach()
        assert_close(f"d/d{n}", got[n], g, 1e-9 * g.abs() + 1e-12 * g.abs().max() + 1e-300)


@given(cases(max_D=96), loss_options())
def test_preference_loss_low_precision(drawn, opts):
    """fp32/bf16/fp16 inputs (mixed): r against the float64 reference; the loss and its gradients at the kernel's
    own r (see the module docstring)."""
    params, config = drawn
    case = make_case(**params)
    with _config(config):
        value, r = K.preference_loss(*case.args(), reduction=case.reduction, backend="triton",
                                     return_log_ratios=True, **opts)
    args64, leaves64 = case.args64()
    r_ref = R.paired_log_ratios(*args64, reduction=case.reduction)
    assert value.dtype == torch.float32 and r.dtype == torch.float32
    assert_close("r", r, r_ref, 1e-5 * ratio_magnitude(case) + 1e-30)
    # the loss and dL/dr, in float64, at the kernel's r
    r_at = r.detach().double().cpu().requires_grad_(True)
    per_pair = L.pairwise_losses(r_at, opts["loss"], opts["beta"], penalty=opts["penalty"],
                                 psi_lambda=opts["psi_lambda"], placement=opts["placement"],
                                 clamp_eps=opts["clamp_eps"])
    want = per_pair.mean()
    assert_close("loss", value, want, 1e-5 * per_pair.detach().abs().mean() + 1e-30)
    (c,) = torch.autograd.grad(want, r_at)
    # the reference's gradient through r, with that c
    r_ref_graph = R.paired_log_ratios(*args64, reduction=case.reduction)
    want_grads = _grads(r_ref_graph, leaves64, c)
    with _config(config):
        got = _grads(value, case.leaves)
    c_mag = c.abs() + 1e-3 * c.abs().max()
    check_grads(case, got, want_grads, c_mag, 1e-5)


def _sweep_case(dtype):
    """8 pairs whose log-ratios fall on both sides of 0 and of the clamp bounds (checked by the caller)."""
    dtypes = dict(y=dtype, x_t=torch.float32 if dtype != torch.float64 else dtype, o_theta=dtype, o_ref=dtype)
    return make_case(12, 8, 24, dict(y=False, x_t=True, o_theta=True, o_ref=True), dtypes,
                     dict.fromkeys(NAMES, "contiguous"), dict(y=True, x_t=False, o_theta=True, o_ref=True),
                     coef_tensors=True, sigma_range=(0.3, 3.0))


@pytest.mark.parametrize("clamp_eps", [None, 0.3])
@pytest.mark.parametrize("placement", ["inside", "outside"])
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_every_fused_loss_penalty_placement_and_clamp(dtype, loss, penalty, placement, clamp_eps):
    """Exhaustive over the kernel's compile-time choices, on pairs that exercise both sides of every mask (hypothesis
    with 25 examples cannot be relied on to reach each combination)."""
    case = _sweep_case(dtype)
    opts = dict(loss=loss, penalty=penalty, beta=1.7, psi_lambda=0.8, placement=placement, clamp_eps=clamp_eps)
    value, r = K.preference_loss(*case.args(), backend="triton", return_log_ratios=True, **opts)
    args64, leaves64 = case.args64()
    r_ref = R.paired_log_ratios(*args64)
    lo, hi = math.log(0.7), math.log(1.3)
    for col in (0, 1):  # the data reach every branch of the masks
        assert (r_ref[:, col] < 0).any() and (r_ref[:, col] > 0).any()
        outside, inside = (r_ref[:, col] < lo) | (r_ref[:, col] > hi), (r_ref[:, col] > lo) & (r_ref[:, col] < hi)
        assert outside.any() and inside.any()
    if dtype == torch.float64:
        want = L.preference_loss(r_ref, **opts)
        assert_close("r", r, r_ref, 1e-12 * ratio_magnitude(case))
        assert_close("loss", value, want, 1e-10 * want.detach().abs() + 1e-300)
        got, want_grads = _grads(value, case.leaves), _grads(want, leaves64)
        for n in want_grads:
            w = want_grads[n].detach()
            assert_close(f"d/d{n}", got[n], w, 1e-9 * w.abs() + 1e-12 * w.abs().max() + 1e-300)
        return
    assert_close("r", r, r_ref, 1e-5 * ratio_magnitude(case))
    r_at = r.detach().double().cpu().requires_grad_(True)
    per_pair = L.pairwise_losses(r_at, **opts)
    want = per_pair.mean()
    assert_close("loss", value, want, 1e-5 * per_pair.detach().abs().mean())
    (c,) = torch.autograd.grad(want, r_at)
    check_grads(case, _grads(value, case.leaves), _grads(R.paired_log_ratios(*args64), leaves64, c),
                c.abs() + 1e-3 * c.abs().max(), 1e-5)


def test_loss_names_and_aliases_agree():
    case = make_case(3, 2, 17, dict(y=False, x_t=True, o_theta=True, o_ref=True), dict.fromkeys(NAMES, torch.float64),
                     dict.fromkeys(NAMES, "contiguous"), dict(y=False, x_t=False, o_theta=True, o_ref=False))
    objects = (L.PAIRWISE_LOSSES["ipo"], L.PENALTIES["dpop"])
    for loss, penalty in (("d3po", None), ("rdpo", None), ("dpo", "psi"), objects):
        got = K.preference_loss(*case.args(), loss=loss, penalty=penalty, beta=2.0, psi_lambda=0.5, backend="triton")
        want = K.preference_loss(*case.args(), loss=loss, penalty=penalty, beta=2.0, psi_lambda=0.5,
                                 backend="reference")
        assert abs(got.item() - want.item()) <= 1e-12 * abs(want.item()), (loss, penalty)


# ----------------------------------------------------------------------------------------------------------------
# gradcheck (float64, small)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False])
def test_gradcheck_log_ratios(shared):
    g = torch.Generator().manual_seed(1)
    P, D = 2, 3
    shape = (P, D) if shared else (P, 2, D)
    y, x, ot, orf = (torch.randn(sh, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_(True)
                     for sh in ((P, 2, D), shape, shape, shape))
    a, b, sigma = torch.tensor([0.9, 0.7], dtype=torch.float64), -0.3, torch.tensor([0.4, 1.1], dtype=torch.float64)

    def fn(y, x, ot, orf):
        return K.paired_log_ratios(y, x, ot, orf, a, b, sigma, reduction="sum", backend="triton")

    assert torch.autograd.gradcheck(fn, (y, x, ot, orf))


@pytest.mark.parametrize("loss,penalty,placement,clamp_eps", [
    ("dpo", "psi", "inside", None), ("ipo", "dpop", "outside", 0.5), ("hinge", "psi-literal", "inside", None),
])
def test_gradcheck_preference_loss(loss, penalty, placement, clamp_eps):
    g = torch.Generator().manual_seed(2)
    P, D = 3, 4
    y = torch.randn(P, 2, D, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    x = torch.randn(P, D, generator=g, dtype=torch.float64).to(DEVICE)
    ot = torch.randn(P, D, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    orf = (ot.detach() + 0.2 * torch.randn(P, D, generator=g, dtype=torch.float64).to(DEVICE)).requires_grad_(True)

    def fn(y, ot, orf):
        return K.preference_loss(y, x, ot, orf, 0.8, 0.5, 0.7, loss=loss, penalty=penalty, beta=0.7, psi_lambda=0.3,
                                 placement=placement, clamp_eps=clamp_eps, backend="triton")

    assert torch.autograd.gradcheck(fn, (y, ot, orf), fast_mode=True)


# ----------------------------------------------------------------------------------------------------------------
# Edge cases
# ----------------------------------------------------------------------------------------------------------------


def _simple(P, D, dtype=torch.float32, seed=0, shared=True):
    g = torch.Generator().manual_seed(seed)
    o_shape = (P, D) if shared else (P, 2, D)
    y = torch.randn(P, 2, D, generator=g).to(DEVICE, dtype)
    x = torch.randn(o_shape, generator=g).to(DEVICE, dtype)
    ot = torch.randn(o_shape, generator=g).to(DEVICE, dtype).requires_grad_(True)
    orf = (ot.detach().float() + 0.3 * torch.randn(o_shape, generator=g).to(DEVICE)).to(dtype)
    return y, x, ot, orf


@pytest.mark.parametrize("P,D,block", [(1, 1, None), (1, 1, (16, 16)), (5, 1, None), (1, 1000, (256, 512)),
                                       (3, 77, (16, 32)), (2, 4097, None)])
def test_edge_shapes(P, D, block):
    y, x, ot, orf = _simple(P, D, torch.float64)
    with _config(block):
        value, r = K.preference_loss(y, x, ot, orf, 0.9, -0.2, 0.3, loss="rdpo", psi_lambda=2.0, beta=3.0,
                                     backend="triton", return_log_ratios=True)
        (g,) = torch.autograd.grad(value, ot)
    want, want_r = _reference_loss_simple(y, x, ot, orf)
    (wg,) = torch.autograd.grad(want, ot)
    assert torch.allclose(r, want_r, rtol=1e-10, atol=1e-14)
    assert torch.allclose(value, want, rtol=1e-10, atol=1e-14)
    assert torch.allclose(g, wg, rtol=1e-9, atol=1e-12 * float(wg.abs().max()) + 1e-300)


def _reference_loss_simple(y, x, ot, orf, **kw):
    opts = dict(loss="rdpo", psi_lambda=2.0, beta=3.0)
    opts.update(kw)
    r = R.paired_log_ratios(y, x, ot, orf, 0.9, -0.2, 0.3)
    return L.preference_loss(r, **opts), r


@pytest.mark.parametrize("loss", ["dpo", "ipo", "hinge", "rdpo"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_log_ratios_do_not_overflow(loss, dtype):
    """σ at the floor min_sigma·max(|a|, |b|) and large outputs: |r| ~ 1e9, |z| up to ~1e12."""
    P, D = 4, 64
    y, x, ot, orf = _simple(P, D, dtype, seed=5)
    with torch.no_grad():
        ot.mul_(1e3)
    orf = orf * 1e3
    b = 1.0
    sigma = 1e-4 * b  # exactly at the floor: allowed
    value, r = K.preference_loss(y, x, ot, orf, 0.5, b, sigma, loss=loss, beta=1e3, psi_lambda=1.0, reduction="sum",
                                 backend="triton", return_log_ratios=True)
    want_r = R.paired_log_ratios(y.double(), x.double(), ot.double(), orf.double(), 0.5, b, sigma, reduction="sum")
    assert float(r.double().abs().max()) > 1e8
    assert torch.isfinite(r).all() and torch.isfinite(value)
    assert torch.allclose(r.double(), want_r, rtol=1e-5 if dtype == torch.float32 else 1e-10)
    # at such |z| the loss is either 0 or linear in r: compare at the kernel's r
    want = L.preference_loss(r.double(), loss, 1e3, psi_lambda=1.0)
    assert math.isclose(value.item(), want.item(), rel_tol=1e-5 if dtype == torch.float32 else 1e-10)
    (g,) = torch.autograd.grad(value, ot)
    assert torch.isfinite(g).all()


def test_tiny_sigma_is_refused_like_the_reference():
    y, x, ot, orf = _simple(2, 8)
    for sigma in (0.0, 1e-9, float("inf"), torch.tensor([0.1, -1.0])):
        with pytest.raises(ValueError) as ref_error:
            R.paired_log_ratios(y, x, ot, orf, 0.5, 1.0, sigma)
        with pytest.raises(ValueError) as kernel_error:
            K.paired_log_ratios(y, x, ot, orf, 0.5, 1.0, sigma, backend="triton")
        assert str(kernel_error.value) == str(ref_error.value)


@pytest.mark.parametrize("opts", [
    dict(loss="dpo"), dict(loss="ipo", clamp_eps=0.2), dict(loss="hinge", penalty="dpop", placement="outside"),
    dict(loss="rdpo", psi_lambda=3.0, clamp_eps=0.1), dict(loss="dpo", penalty="psi-literal", psi_lambda=1.0),
])
@pytest.mark.parametrize("where", ["y_l", "o_theta", "sigma"])
def test_nan_propagates_like_the_reference(opts, where):
    """NaN inputs give NaN exactly where the reference gives NaN: in r, in the loss and in every gradient."""
    P, D = 3, 20
    y, x, ot, orf = _simple(P, D, torch.float64, seed=7)
    sigma = torch.tensor([0.5, 0.6, 0.7], dtype=torch.float64)
    with torch.no_grad():
        if where == "y_l":
            y[1, 1, 3] = float("nan")
        elif where == "o_theta":
            ot[2, 5] = float("nan")
        else:
            sigma[0] = float("nan")
    y.requires_grad_(True)
    value, r = K.preference_loss(y, x, ot, orf, 0.9, 0.4, sigma, beta=2.0, backend="triton", return_log_ratios=True,
                                 **opts)
    want_r = R.paired_log_ratios(y, x, ot, orf, 0.9, 0.4, sigma)
    want = L.preference_loss(want_r, beta=2.0, **opts)
    assert torch.isnan(r).any()
    assert_close("r", r, want_r, 1e-12)
    assert_close("loss", value, want, 1e-12)
    got_g = torch.autograd.grad(value, (ot, y))
    want_g = torch.autograd.grad(want, (ot, y))
    for name, g, w in zip(("o_theta", "y"), got_g, want_g):
        assert_close(f"d/d{name}", g, w, 1e-9 * w.abs().nan_to_num() + 1e-12)


def test_nan_in_log_ratios_only_alone():
    """A NaN in one branch's inputs makes that branch's log-ratio NaN and leaves every other entry as it was."""
    y, x, ot, orf = _simple(3, 8)
    clean = K.paired_log_ratios(y, x, ot.detach(), orf, 0.5, 1.0, 0.5, backend="triton")
    y = y.clone()
    y[1, 0, 3] = float("nan")
    r = K.paired_log_ratios(y, x, ot.detach(), orf, 0.5, 1.0, 0.5, backend="triton")
    assert torch.isnan(r[1, 0]) and torch.isfinite(clean).all()
    others = torch.ones(3, 2, dtype=torch.bool)
    others[1, 0] = False
    assert torch.equal(r[others], clean[others])


def test_interpreter_nan_semantics_measured():
    """What the interpreter does with NaN (measured here, relied upon in docs/kernels.md): ``tl.maximum``,
    ``tl.minimum`` and ``tl.clamp`` drop NaN (as the GPU's default fmax/fmin), ``propagate_nan=ALL`` and a
    ``tl.where`` chain keep it — so the kernels use where-chains (and the compile test checks that no fmax/fmin
    reaches the GPU code)."""
    if not is_interpreted():
        pytest.skip("measures the interpreter")
    import triton
    import triton.language as tl

    @triton.jit
    def probe(x_ptr, out_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs)
        tl.store(out_ptr + offs, tl.maximum(x, 0.0))
        tl.store(out_ptr + BLOCK + offs, tl.clamp(x, -0.1, 0.1))
        tl.store(out_ptr + 2 * BLOCK + offs, tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL))
        tl.store(out_ptr + 3 * BLOCK + offs, tl.where(x < 0.0, 0.0, x))

    x = torch.tensor([float("nan"), -1.0])
    out = torch.zeros(8)
    probe[(1,)](x, out, BLOCK=2)
    out = out.view(4, 2)
    assert not torch.isnan(out[0, 0]) and not torch.isnan(out[1, 0])  # dropped
    assert torch.isnan(out[2, 0]) and torch.isnan(out[3, 0])  # kept


def test_shared_equals_stride0_expansion_and_grads_sum():
    """A [P, D] tensor and its [P, 2, D] stride-0 expansion give the same r; the [P, D] gradient is the sum of both
    branches' gradients."""
    y, x, ot, orf = _simple(3, 40, torch.float64)
    r1 = K.paired_log_ratios(y, x, ot, orf, 0.7, 0.3, 0.4, backend="triton")
    ot2 = ot.detach().clone().requires_grad_(True)
    r2 = K.paired_log_ratios(y, x.unsqueeze(1).expand(3, 2, 40), ot2.unsqueeze(1).expand(3, 2, 40),
                             orf.unsqueeze(1).expand(3, 2, 40), 0.7, 0.3, 0.4, backend="triton")
    assert torch.equal(r1, r2)
    up = torch.randn(3, 2, dtype=torch.float64, device=DEVICE)
    (g1,) = torch.autograd.grad(r1, ot, up)
    (g2,) = torch.autograd.grad(r2, ot2, up)
    assert torch.allclose(g1, g2, rtol=1e-12, atol=1e-15)


def test_deterministic():
    y, x, ot, orf = _simple(3, 100)
    with force_launch_config(16, 32):
        runs = [K.preference_loss(y, x, ot, orf, 0.9, 0.5, 0.3, loss="rdpo", psi_lambda=1.0, backend="triton",
                                  return_log_ratios=True) for _ in range(2)]
        grads = [torch.autograd.grad(v, ot)[0] for v, _ in runs]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert torch.equal(grads[0], grads[1])


def test_only_requested_gradients_and_none_x():
    """x_t = None with a = 0 (Diffusion-DPO): x_t is not read; the gradient to y (ε) flows through its expansion."""
    P, D = 2, 33
    eps = torch.randn(P, D, device=DEVICE, requires_grad=True)
    x = torch.randn(P, 2, D, device=DEVICE)
    ot = torch.randn(P, 2, D, device=DEVICE, requires_grad=True)
    orf = torch.randn(P, 2, D, device=DEVICE)
    y = eps.unsqueeze(1).expand(P, 2, D)
    kw = dict(loss="dpo", beta=5000.0)
    value = K.preference_loss(y, None, ot, orf, 0.0, 1.0, 1.0, backend="triton", **kw)
    want = K.preference_loss(y, x, ot, orf, 0.0, 1.0, 1.0, backend="reference", **kw)
    assert math.isclose(value.item(), want.item(), rel_tol=1e-5)
    got = torch.autograd.grad(value, (eps, ot))
    ref = torch.autograd.grad(want, (eps, ot))
    for g, w in zip(got, ref):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-6 * float(w.abs().max()))


def test_return_log_ratios_are_detached_and_equal():
    y, x, ot, orf = _simple(3, 50)
    value, r = K.preference_loss(y, x, ot, orf, 0.9, 0.5, 0.3, backend="triton", return_log_ratios=True)
    assert not r.requires_grad and value.requires_grad
    assert torch.allclose(r, K.paired_log_ratios(y, x, ot, orf, 0.9, 0.5, 0.3, backend="triton"), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# Fallback for losses without a fused form, dispatch, and errors
# ----------------------------------------------------------------------------------------------------------------


def _squared_hinge(inputs: L.LossInputs) -> torch.Tensor:
    return torch.relu(1.0 - inputs.margin) ** 2


SQUARED_HINGE = L.PairwiseLoss("squared-hinge", _squared_hinge, "a plugin's loss with no kernel form")
PLUGIN_PENALTY = L.Penalty("abs-l", lambda r_w, r_l: r_l.abs(), "a plugin's penalty with no kernel form")


@pytest.mark.parametrize("loss,penalty", [(SQUARED_HINGE, None), ("dpo", PLUGIN_PENALTY)])
def test_unfused_plugin_loss_falls_back_visibly(loss, penalty, caplog):
    y, x, ot, orf = _simple(3, 40, torch.float64)
    assert K.fused_loss_path(loss, penalty).startswith("fallback: ")
    assert K.fused_loss_path("rdpo") == "fused"
    with caplog.at_level(logging.DEBUG, logger="rdpo_zoo.kernels"):
        value, r = K.preference_loss(y, x, ot, orf, 0.9, 0.5, 0.3, loss=loss, penalty=penalty, psi_lambda=0.5,
                                     beta=2.0, backend="triton", return_log_ratios=True)
    assert any("no fused form" in rec.getMessage() for rec in caplog.records)
    want = K.preference_loss(y, x, ot, orf, 0.9, 0.5, 0.3, loss=loss, penalty=penalty, psi_lambda=0.5, beta=2.0,
                             backend="reference")
    assert math.isclose(value.item(), want.item(), rel_tol=1e-12)
    assert not r.requires_grad
    g = torch.autograd.grad(value, ot)[0]
    w = torch.autograd.grad(want, ot)[0]
    assert torch.allclose(g, w, rtol=1e-10, atol=1e-13)


def test_dispatch_rules(monkeypatch):
    if not is_interpreted():
        pytest.skip("the CPU dispatch rules, under the interpreter")
    y, x, ot, orf = _simple(2, 8)
    cpu = torch.device("cpu")
    assert K.select_backend(None, cpu) == "reference"
    assert K.select_backend("reference", cpu) == "reference"
    assert K.select_backend("triton", cpu) == "triton"  # under the interpreter
    with pytest.raises(ValueError, match="backend: expected None, 'triton' or 'reference'"):
        K.paired_log_ratios(y, x, ot, orf, 0.5, 1.0, 0.5, backend="cuda")
    # step coefficients that require grad: the reference on auto, a clear error on triton
    sigma = torch.tensor([0.5, 0.6], requires_grad=True)
    r = K.paired_log_ratios(y, x, ot, orf, 0.5, 1.0, sigma)
    assert r.requires_grad and torch.autograd.grad(r.sum(), sigma)[0].shape == (2,)
    with pytest.raises(RuntimeError, match="sigma requires grad"):
        K.paired_log_ratios(y, x, ot, orf, 0.5, 1.0, sigma, backend="triton")
    # kernels defined without the interpreter cannot take CPU tensors
    from rdpo_zoo.kernels import lean, log_ratio

    monkeypatch.setattr(log_ratio, "is_interpreted", lambda: False)
    lean.clear_plans()  # launch plans keep the dispatch decision, a fact of the process that this test fakes
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        K.paired_log_ratios(y, x, ot, orf, 0.5, 1.0, 0.5, backend="triton")
    # no Triton at all: the reference on auto, a clear error on triton
    from rdpo_zoo.kernels import loader

    monkeypatch.setattr(loader, "load_triton", lambda: None)
    monkeypatch.setattr(loader, "triton_error", ImportError("No module named 'triton'"))
    with pytest.raises(RuntimeError, match="Triton cannot be imported"):
        K.preference_loss(y, x, ot, orf, 0.5, 1.0, 0.5, backend="triton")
    assert K.select_backend(None, torch.device("cuda", 0)) == "reference"
    assert K.fused_loss_path("dpo") == "fused"  # a property of the loss, known without Triton


def _error(fn):
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - the point is to compare them
        return type(error), str(error)
    return None


BAD_INPUTS = {
    "y 1-d": lambda y, x, ot, orf: dict(y=y[0, 0]),
    "o_theta wrong D": lambda y, x, ot, orf: dict(o_theta=ot[:, :-1]),
    "x_t wrong P": lambda y, x, ot, orf: dict(x_t=x[:1]),
    "o_ref 4-d": lambda y, x, ot, orf: dict(o_ref=orf.unsqueeze(0)),
    "integer y": lambda y, x, ot, orf: dict(y=y.long()),
    "bool o_ref": lambda y, x, ot, orf: dict(o_ref=orf > 0),
    "list o_theta": lambda y, x, ot, orf: dict(o_theta=[1.0]),
    "meta device": lambda y, x, ot, orf: dict(o_ref=orf.to("meta")),
    "x_t None with a != 0": lambda y, x, ot, orf: dict(x_t=None),
    "a wrong length": lambda y, x, ot, orf: dict(a=torch.ones(3)),
    "b a string": lambda y, x, ot, orf: dict(b="1"),
    "sigma zero": lambda y, x, ot, orf: dict(sigma=0.0),
    "sigma bool tensor": lambda y, x, ot, orf: dict(sigma=torch.tensor(True)),
    "reduction": lambda y, x, ot, orf: dict(reduction="max"),
    "min_sigma": lambda y, x, ot, orf: dict(min_sigma=-1.0),
    "P = 0": lambda y, x, ot, orf: dict(y=y[:0], x_t=x[:0], o_theta=ot[:0], o_ref=orf[:0]),
}
BAD_LOSSES = {
    "unknown loss": dict(loss="kto"),
    "unknown penalty": dict(penalty="l2"),
    "rdpo with a second penalty": dict(loss="rdpo", penalty="dpop"),
    "loss type": dict(loss=3),
    "beta zero": dict(beta=0.0),
    "beta nan": dict(beta=float("nan")),
    "beta bool": dict(beta=True),
    "negative lambda": dict(psi_lambda=-1.0),
    "placement": dict(placement="middle"),
    "clamp 1": dict(clamp_eps=1.0),
    "clamp inf": dict(clamp_eps=float("inf")),
}


@pytest.mark.parametrize("bad", sorted(BAD_INPUTS))
def test_bad_inputs_raise_the_reference_errors(bad):
    y, x, ot, orf = _simple(2, 8)
    kwargs = dict(y=y, x_t=x, o_theta=ot, o_ref=orf, a=0.5, b=1.0, sigma=0.5)
    kwargs.update(BAD_INPUTS[bad](y, x, ot, orf))
    want = _error(lambda: R.paired_log_ratios(**kwargs))
    assert want is not None
    assert _error(lambda: K.paired_log_ratios(**kwargs, backend="triton")) == want
    assert _error(lambda: K.paired_log_ratios(**kwargs)) == want
    assert _error(lambda: K.preference_loss(**kwargs, backend="triton")) == want


@pytest.mark.parametrize("bad", sorted(BAD_LOSSES))
def test_bad_loss_arguments_raise_the_reference_errors(bad):
    y, x, ot, orf = _simple(2, 8)
    opts = dict(loss="dpo", beta=0.1)
    opts.update(BAD_LOSSES[bad])
    r = R.paired_log_ratios(y, x, ot, orf, 0.5, 1.0, 0.5)
    want = _error(lambda: L.preference_loss(r, **opts))
    assert want is not None
    for backend in ("triton", "reference", None):
        assert _error(lambda: K.preference_loss(y, x, ot, orf, 0.5, 1.0, 0.5, backend=backend, **opts)) == want


# ----------------------------------------------------------------------------------------------------------------
# Big shapes (opt-in: -m slow)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("P,D", [(2, 16384), (1, 65536), (8, 4096 + 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_big_shapes(P, D, dtype):
    shared = dict(y=False, x_t=True, o_theta=True, o_ref=True)
    case = make_case(11, P, D, shared, dict.fromkeys(NAMES, dtype), dict.fromkeys(NAMES, "contiguous"),
                     dict(y=False, x_t=False, o_theta=True, o_ref=False))
    opts = dict(loss="rdpo", penalty=None, beta=10.0, psi_lambda=1.0, placement="inside", clamp_eps=None)
    value, r = K.preference_loss(*case.args(), backend="triton", return_log_ratios=True, **opts)
    args64, leaves64 = case.args64()
    r_ref = R.paired_log_ratios(*args64)
    assert_close("r", r, r_ref, 1e-5 * ratio_magnitude(case))
    r_at = r.detach().double().cpu().requires_grad_(True)
    want = L.preference_loss(r_at, **opts)
    (c,) = torch.autograd.grad(want, r_at)
    want_grads = _grads(R.paired_log_ratios(*args64), leaves64, c)
    got = _grads(value, case.leaves)
    check_grads(case, got, want_grads, c.abs() + 1e-3 * c.abs().max(), 1e-5)
