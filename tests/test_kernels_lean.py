"""The lean launch path (kernels/lean.py), the torch.compile custom ops (kernels/custom_ops.py) and
``rdpo-zoo bench --host``.

- Under the interpreter (this process): the lean path gives bitwise the general path's values and gradients, reuses
  its launch plans, and raises the general path's exact errors.
- In a child process with the fake CUDA driver (Triton's real dispatch, the launch stubbed) and the inputs on the
  ``meta`` device, which holds no data: any read-back of a device tensor (``.item()``, ``.tolist()``, ``.cpu()``,
  ``bool()``: what synchronises a GPU) raises, so a forward + backward that would synchronise fails there. The same
  child counts the launches and the torch operators of a call.
- The custom ops pass ``torch.library.opcheck``, and ``torch.compile(fullgraph=True)`` compiles a loss through
  ``kernels.preference_loss``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rdpo_zoo import kernels as K
from rdpo_zoo import losses as L
from rdpo_zoo import reference as R

pytest.importorskip("triton")
from rdpo_zoo.kernels import custom_ops, lean  # noqa: E402
from rdpo_zoo.kernels.log_ratio import is_interpreted  # noqa: E402

needs_interpreter = pytest.mark.skipif(not is_interpreted(), reason="the Triton path on CPU tensors")


def _inputs(P=3, D=40, layout="shared", dtype=torch.float32, out_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    out_dtype = out_dtype or dtype

    def rand(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(dt)

    o_shape = (P, D) if layout == "shared" else (P, 2, D)
    y = rand(P, 2, D)
    x = None if layout == "noised" else rand(*o_shape)
    if layout == "noised":
        y = rand(P, D).unsqueeze(1).expand(P, 2, D)
    ot = rand(*o_shape, dt=out_dtype).requires_grad_(True)
    orf = (ot.detach().float() + 0.1 * rand(*o_shape, dt=torch.float32)).to(out_dtype)
    a = torch.zeros(P) if layout == "noised" else 0.9 + 0.1 * torch.rand(P, generator=g)
    b = -0.1 * torch.rand(P, generator=g) - 0.05
    sigma = 0.1 + 0.2 * torch.rand(P, generator=g)
    return y, x, ot, orf, a, b, sigma


def _both(fn):
    """``fn()`` through the lean path and through the general path."""
    with K.use_lean_path(True):
        lean_out = fn()
    with K.use_lean_path(False):
        general_out = fn()
    return lean_out, general_out


@needs_interpreter
@pytest.mark.parametrize("layout,dtype,out_dtype", [("shared", torch.float32, None),
                                                    ("per-branch", torch.float32, torch.bfloat16),
                                                    ("noised", torch.float64, None)])
@pytest.mark.parametrize("loss_kwargs", [dict(loss="dpo"), dict(loss="rdpo", psi_lambda=2.0, clamp_eps=0.1),
                                         dict(loss="ipo", penalty="dpop", psi_lambda=0.5, placement="outside")])
def test_lean_path_is_the_general_path_bitwise(layout, dtype, out_dtype, loss_kwargs):
    y, x, ot, orf, a, b, sigma = _inputs(layout=layout, dtype=dtype, out_dtype=out_dtype)
    orf.requires_grad_(True)
    coefficients = (0.0 if layout == "noised" else 0.95, -0.1, 0.2) if loss_kwargs["loss"] == "ipo" else (a, b, sigma)
    upstream = torch.tensor(0.7, dtype=torch.float64 if dtype == torch.float64 else torch.float32)

    def run():
        value, r = K.preference_loss(y, x, ot, orf, *coefficients, backend="triton", return_log_ratios=True,
                                     **loss_kwargs)
        return (value.detach(), r, *torch.autograd.grad(value, (ot, orf), upstream))

    before = lean.plan_count()
    (lean_out, general_out) = _both(run)
    for got, want in zip(lean_out, general_out):
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert lean.plan_count() == before + 1
    run()  # the same shapes: the plan is reused
    assert lean.plan_count() == before + 1


@needs_interpreter
def test_lean_log_ratios_and_a_strided_upstream_gradient():
    y, x, ot, orf, a, b, sigma = _inputs(P=2, D=33, layout="per-branch")
    y.requires_grad_(True)
    upstream = torch.randn(2, 4)[:, ::2]  # a non-contiguous dL/dr

    def run():
        r = K.paired_log_ratios(y, x, ot, orf, a, b, sigma, reduction="sum", backend="triton")
        return (r.detach(), *torch.autograd.grad(r, (y, ot), upstream))

    lean_out, general_out = _both(run)
    assert type(K.paired_log_ratios(y, x, ot, orf, a, b, sigma, backend="triton").grad_fn).__name__.startswith("Lean")
    for got, want in zip(lean_out, general_out):
        assert torch.equal(got, want)


@needs_interpreter
def test_lean_path_raises_the_general_paths_errors():
    y, x, ot, orf, a, b, sigma = _inputs()
    K.preference_loss(y, x, ot, orf, a, b, sigma, backend="triton")  # a plan for these shapes exists
    bad = {
        "sigma 0 at one step": dict(sigma=torch.tensor([0.2, 0.0, 0.2])),
        "sigma below the floor": dict(sigma=1e-6, a=0.9, b=-0.1),
        "sigma inf": dict(sigma=torch.tensor([0.2, float("inf"), 0.2])),
        "sigma shape": dict(sigma=torch.full((4,), 0.2)),
        "sigma bool": dict(sigma=torch.ones(3, dtype=torch.bool)),
        "a string": dict(a="0.9"),
        "x_t None with a != 0": dict(x=None),
        "min_sigma": dict(min_sigma=-1.0),
    }
    for name, change in bad.items():
        args = dict(y=y, x=x, ot=ot, orf=orf, a=a, b=b, sigma=sigma, min_sigma=R.DEFAULT_MIN_SIGMA)
        args.update(change)

        def call():
            return K.preference_loss(args["y"], args["x"], args["ot"], args["orf"], args["a"], args["b"],
                                     args["sigma"], min_sigma=args["min_sigma"], backend="triton")

        errors = []
        for enabled in (True, False):
            with K.use_lean_path(enabled):
                with pytest.raises(Exception) as info:
                    call()
            errors.append((type(info.value), str(info.value)))
        assert errors[0] == errors[1], name
    # NaN passes the check and propagates, as on the general path
    nan_sigma = torch.tensor([0.2, float("nan"), 0.2])
    lean_r, general_r = _both(lambda: K.preference_loss(y, x, ot, orf, a, b, nan_sigma, backend="triton",
                                                        return_log_ratios=True)[1])
    assert torch.equal(lean_r.isnan(), general_r.isnan()) and lean_r.isnan()[1].all()


def test_a_launcher_whose_compiled_launch_fails_goes_back_to_kernel_grid():
    """A Triton whose compiled-kernel launcher does not take JITFunction.run's arguments: the first direct launch
    raises, and every later launch goes through kernel[grid]."""
    calls = {"jit": 0, "direct": 0}

    class Compiled:
        function, packed_metadata = 1, 2

        def run(self, *args):
            calls["direct"] += 1
            raise TypeError("function takes exactly 12 arguments")

    class Kernel:
        arg_names = ["x", "n", "BLOCK"]

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                calls["jit"] += 1
                return Compiled()
            return launch

    launcher = lean._Launcher(Kernel(), (4,), dict(BLOCK=128))
    launcher(0, "x", 3)
    assert launcher.direct is not None and launcher.tail == (128,)
    launcher(0, "x", 3)  # the direct launch fails: this call goes through kernel[grid] ...
    launcher(0, "x", 3)  # ... and so does every later one
    assert calls == {"jit": 3, "direct": 1} and launcher.direct is None


# ----------------------------------------------------------------------------------------------------------------
# No device sync, three launches, no zeros/ones_like kernels: a child process with the fake driver, meta tensors
# ----------------------------------------------------------------------------------------------------------------

_META_CHILD = textwrap.dedent("""
    import json, os
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    from rdpo_zoo.kernels import fake_driver
    fake_driver.install()
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from rdpo_zoo import kernels
    from rdpo_zoo.diffusion import pick_coefficients

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    P, D, m = 4, 256, "meta"  # meta tensors hold no data: reading one back raises, as a GPU sync would cost
    y, x = torch.empty(P, 2, D, device=m), torch.empty(P, D, device=m)
    ot, orf = torch.empty(P, D, device=m, requires_grad=True), torch.empty(P, D, device=m)
    table = torch.tensor([[0.9, -0.1, 0.2], [0.95, -0.05, 0.3], [0.99, -0.02, 0.4]])  # the trainer's [T, 3]
    steps = torch.tensor([0, 2, 1, 2])  # on the host, as the trainer hands them over
    one = torch.ones((), device=m)
    out = {}
    for name, lean in (("lean", True), ("general", False)):
        with kernels.use_lean_path(lean):
            for _ in range(2):  # the second call runs on the plan the first one built
                rec = Record()
                before = fake_driver.launch_count()
                with rec:
                    a, b, sigma = pick_coefficients(table, steps)
                    loss, r = kernels.preference_loss(y, x, ot, orf, a, b, sigma, loss="rdpo", psi_lambda=1.0,
                                                      backend="triton", return_log_ratios=True)
                    (grad,) = torch.autograd.grad(loss, ot, one)
            out[name] = dict(launches=fake_driver.launch_count() - before, ops=rec.ops,
                             grad=[list(grad.shape), str(grad.device)])
    # the trainer's coefficients before this change: a table of device scalars, indexed on the device
    old = [tuple(v.to(m) for v in row.unbind()) for row in table]
    try:
        rebuilt = torch.stack([torch.stack(s) for s in old])
        picked = rebuilt[steps.to(m)]
        kernels.preference_loss(y, x, ot, orf, picked[:, 0], picked[:, 1], picked[:, 2], backend="triton")
        out["device_coefficients"] = "no error"
    except NotImplementedError as error:
        out["device_coefficients"] = str(error)
    print("RESULT " + json.dumps(out))
""")


def _child(code: str, timeout: float = 600.0) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_a_forward_and_backward_never_reads_the_device_and_launches_three_kernels():
    out = _child(_META_CHILD)
    lean_run, general_run = out["lean"], out["general"]
    assert lean_run["grad"] == [[4, 256], "meta"]
    # no read-back of a device tensor (it would have raised): with the trainer's host coefficients, both paths
    assert lean_run["launches"] == 3 and general_run["launches"] == 3
    # the lean path: no materialised zero gradient for r, no fill kernels; one allocation and one copy forward
    filling = {"zeros", "zeros_like", "ones_like", "fill_", "zero_", "full", "full_like"}
    assert not filling & set(lean_run["ops"]), lean_run["ops"]
    assert "zeros" in general_run["ops"]  # autograd's zero gradient for r, before set_materialize_grads(False)
    allocations = sum(lean_run["ops"].count(op) for op in ("empty", "empty_like", "empty_strided"))
    assert allocations == 2 and lean_run["ops"].count("copy_") == 1, lean_run["ops"]  # workspace, gradient
    # device-tensor coefficients take the full check, which reads them back: the sync this test exists to catch
    assert "meta" in out["device_coefficients"], out["device_coefficients"]


# ----------------------------------------------------------------------------------------------------------------
# The custom ops and torch.compile
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["shared", "per-branch", "noised"])
def test_the_custom_ops_pass_opcheck(layout):
    y, x, ot, orf, a, b, sigma = _inputs(P=2, D=16, layout=layout, dtype=torch.float64)
    orf.requires_grad_(True)
    for code, penalty, inside, clamp in ((1, 1, True, 0.1), (2, 3, False, None), (3, 2, True, None)):
        torch.library.opcheck(custom_ops.fused_preference_loss_op,
                              (y, x, ot, orf, a, b, sigma, True, 1e-4, code, penalty, inside, 0.5, 1.5, clamp))
    torch.library.opcheck(custom_ops.paired_log_ratios_op, (y, x, ot, orf, a, b, sigma, False, 1e-4))


@pytest.mark.parametrize("loss_kwargs", [dict(loss="dpo", clamp_eps=0.1), dict(loss="rdpo", psi_lambda=3.0),
                                         dict(loss="hinge", penalty="psi-literal", psi_lambda=0.5)])
def test_the_custom_op_values_and_gradients_are_the_references(loss_kwargs):
    y, x, ot, orf, a, b, sigma = _inputs(P=3, D=24, layout="per-branch", dtype=torch.float64, seed=3)
    y.requires_grad_(True)
    x.requires_grad_(True)
    beta = 0.7
    loss_obj, penalty_obj = L.resolve_loss(loss_kwargs["loss"], loss_kwargs.get("penalty"))
    code, penalty, _ = K._fused_codes(loss_obj, penalty_obj)
    got, r, _, _ = custom_ops.fused_preference_loss_op(
        y, x, ot, orf, a, b, sigma, True, 1e-4, code, penalty, True, beta, loss_kwargs.get("psi_lambda", 0.0),
        loss_kwargs.get("clamp_eps"))
    want = L.preference_loss(R.paired_log_ratios(y, x, ot, orf, a, b, sigma), beta=beta, **loss_kwargs)
    assert torch.allclose(got, want, rtol=1e-12, atol=0)
    for g_got, g_want in zip(torch.autograd.grad(got, (y, x, ot)), torch.autograd.grad(want, (y, x, ot))):
        assert torch.allclose(g_got, g_want, rtol=1e-9, atol=1e-15)


def test_torch_compile_fullgraph_compiles_a_loss_through_the_fused_op():
    y, x, ot, orf, a, b, sigma = _inputs(P=3, D=32)
    torch._dynamo.reset()

    def step(y, x, ot, orf, a, b, sigma):
        loss, r = K.preference_loss(y, x, ot, orf, a, b, sigma, loss="rdpo", psi_lambda=1.0, beta=0.5,
                                    return_log_ratios=True)
        return loss * 2.0, r

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    got, got_r = compiled(y, x, ot, orf, a, b, sigma)
    want, want_r = step(y, x, ot, orf, a, b, sigma)
    assert torch.allclose(got, want, rtol=1e-6) and torch.allclose(got_r, want_r, rtol=1e-6, atol=1e-7)
    (g_got,) = torch.autograd.grad(got, ot)
    (g_want,) = torch.autograd.grad(want, ot)
    assert torch.allclose(g_got, g_want, rtol=1e-5, atol=1e-9)
    # the value checks run when the compiled code runs: the eager error, word for word
    bad = torch.tensor([0.2, 0.0, 0.2])
    with pytest.raises(ValueError) as compiled_error:
        compiled(y, x, ot, orf, a, b, bad)
    with pytest.raises(ValueError) as eager_error:
        step(y, x, ot, orf, a, b, bad)
    assert str(compiled_error.value) == str(eager_error.value)
    # a bad shape is refused while tracing, with the eager error too
    with pytest.raises(Exception, match=r"o_ref: expected shape \[P, D\]"):
        compiled(y, x, ot, orf[:, :5], a, b, sigma)


# ----------------------------------------------------------------------------------------------------------------
# rdpo-zoo bench --host
# ----------------------------------------------------------------------------------------------------------------


def test_bench_host_writes_both_paths_and_the_trainers_in_its_json(tmp_path):
    from rdpo_zoo.kernels import host_bench

    path = tmp_path / "host.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", "from rdpo_zoo.cli import main; main()", "bench", "--host",
                           "--calls", "40", "--json", str(path)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "general/lean" in done.stdout
    result = json.loads(path.read_text())
    host_bench.validate_host_result(result)
    rows = result["rows"]
    combos = {(r["caller"], r["mode"], r["path"]) for r in rows}
    assert combos == {(c, m, p) for c in ("bench", "trainer") for m in ("forward", "full")
                      for p in ("general", "lean")}
    assert {tuple(r["point"].values()) for r in rows} == {tuple(p) for p in host_bench.HOST_POINTS}
    for row in rows:
        assert row["launches"] == (3 if row["mode"] == "full" else 2), row
        if row["path"] == "lean" and row["mode"] == "full":
            assert "zeros" not in row["operators"]
    assert len(result["ratios"]) == len(rows) // 2 and all(r["general_over_lean"] > 0 for r in result["ratios"])


@needs_interpreter
def test_a_plan_for_beta_1_does_not_take_a_call_with_beta_true():
    y, x, ot, orf, a, b, sigma = _inputs(P=2, D=16)
    K.preference_loss(y, x, ot, orf, a, b, sigma, beta=1, backend="triton")
    with pytest.raises(ValueError, match="beta: expected a finite number, got True"):
        K.preference_loss(y, x, ot, orf, a, b, sigma, beta=True, backend="triton")
