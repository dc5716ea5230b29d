"""``rdpo-zoo bench`` and the byte model, and that the kernels and the bench import with only torch (+ triton).

The bench runs in subprocesses: the conftest switches the Triton interpreter on for this process, and the point of
two of these tests is a process where it is off (a CPU machine: Triton needs a GPU) or where Triton, diffusers,
peft and transformers cannot be imported at all (a bare GPU machine has torch and triton only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rdpo_zoo.kernels import bench as kbench

RDPO_ZOO = [sys.executable, "-c", "from rdpo_zoo.cli import main; main()"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(extra)
    return env


def _run(args, env=None, timeout=600):
    done = subprocess.run(RDPO_ZOO + args, env=env or _env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _load(path):
    result = json.loads(path.read_text())
    kbench.validate_result(result)
    return result


def test_bench_quick_json_on_cpu(tmp_path):
    """--quick on the CPU: the reference runs, the Triton path says it needs a GPU, the JSON is valid."""
    path = tmp_path / "bench.json"
    done = _run(["bench", "--quick", "--device", "cpu", "--providers", "triton,eager", "--threads", "1",
                 "--rep-ms", "20", "--json", str(path)])
    assert "the Triton path needs a CUDA GPU" in done.stdout
    assert "loss 'dpo': fused" in done.stdout
    result = _load(path)
    assert result["device_type"] == "cpu" and result["providers"] == ["eager"]
    assert result["versions"]["torch"] == torch.__version__
    points = {(r["x"]["P"], r["x"]["D"], r["x"]["dtype"], r["x"]["layout"]) for r in result["rows"]}
    assert points == {(P, 16384, dt, "shared") for P in (1, 8) for dt in ("fp32", "bf16")}
    times = [r for r in result["rows"] if r["metric"] == "time"]
    assert {(r["provider"], r["mode"]) for r in times} == {("eager", "forward"), ("eager", "full")}
    assert any(r["provider"] == "copy" and r["metric"] == "bandwidth_min_bytes" for r in result["rows"])
    # the table: a header and one line per point and mode
    assert "best GB/s" in done.stdout and done.stdout.count(" shared ") >= 8


def test_bench_interpret_runs_the_triton_path(tmp_path):
    path = tmp_path / "bench.json"
    done = _run(["bench", "--interpret", "--check", "--P", "1,2", "--D", "300", "--dtypes", "fp32,mixed,fp16",
                 "--layouts", "shared,noised", "--providers", "triton,eager", "--rep-ms", "5", "--loss", "rdpo",
                 "--psi-lambda", "1.0", "--json", str(path)])
    assert "interpreter" in done.stdout and "passed" in done.stdout
    result = _load(path)
    assert result["check"]["passed"] and set(result["check"]["worst"]) == {"r", "loss", "grad"}
    assert result["interpret"] is True and result["providers"] == ["triton", "eager"]
    metrics = {(r["provider"], r["metric"]) for r in result["rows"]}
    for metric in ("time", "throughput_min_bytes", "throughput_moved_bytes", "copy_fraction_moved_bytes",
                   "speedup_vs_eager", "bytes_moved"):
        assert ("triton", metric) in metrics, metric
    assert result["loss"]["path"] == "fused"


def test_bench_check_fails_on_a_wrong_gradient():
    """--check compares with the float64 reference: a gradient 1 % off fails it."""
    code = textwrap.dedent("""
        import os
        os.environ["TRITON_INTERPRET"] = "1"
        from rdpo_zoo.kernels import bench, log_ratio
        launch = log_ratio.launch_backward
        def off(*args, **kwargs):
            return tuple(None if g is None else g * 1.01 for g in launch(*args, **kwargs))
        log_ratio.launch_backward = off
        from rdpo_zoo.kernels import fused_loss, lean
        fused_loss.launch_backward = off
        lean_backward = lean._backward  # the lean launch path's backward, which the bench's calls take
        lean._backward = lambda *a, **k: [None if g is None else g * 1.01 for g in lean_backward(*a, **k)]
        s = bench.BenchSettings(grid=dict(P=(2,), D=(64,), dtype=("fp32",), layout=("shared",)),
                                providers=("triton",), check=True, rep_ms=1, warmup_ms=1)
        r = bench.run_bench(s)
        assert r["check"]["passed"] is False and r["check"]["worst"]["grad"] > 1, r["check"]
        assert r["check"]["worst"]["r"] <= 1 and r["check"]["worst"]["loss"] <= 1, r["check"]
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_bench_notes_an_unfused_loss(tmp_path):
    """A loss with no fused form is reported: at the top of the run and in the JSON."""
    code = textwrap.dedent("""
        import json, sys
        from rdpo_zoo import losses
        from rdpo_zoo.kernels import bench
        losses.PAIRWISE_LOSSES["sq"] = losses.PairwiseLoss("sq", lambda i: (1 - i.margin) ** 2, "squared")
        s = bench.BenchSettings(grid=dict(P=(1,), D=(64,), dtype=("fp32",), layout=("shared",)),
                                providers=("eager",), loss="sq", rep_ms=2, warmup_ms=1)
        r = bench.run_bench(s)
        bench.validate_result(r)
        print(json.dumps(r["notes"]))
    """)
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    notes = json.loads(done.stdout.strip().splitlines()[-1])
    assert any("no fused form" in n for n in notes), notes


@pytest.mark.slow
def test_bench_quick_with_torch_compile(tmp_path):
    """The full --quick run, torch.compile included (compiling on the CPU takes minutes)."""
    path = tmp_path / "bench.json"
    _run(["bench", "--quick", "--threads", "1", "--json", str(path)], timeout=1800)
    result = _load(path)
    assert "compile" in result["providers"]


def test_kernels_and_bench_import_without_heavy_packages():
    """With diffusers, peft, transformers, accelerate *and triton* unimportable: the kernels fall back to the
    reference (auto) or raise a clear error (backend='triton'), and ``rdpo-zoo bench`` runs."""
    code = textwrap.dedent("""
        import importlib.abc, sys
        BLOCKED = {"diffusers", "peft", "transformers", "accelerate", "triton"}
        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"No module named {name!r}")
        sys.meta_path.insert(0, Blocker())
        import torch
        from rdpo_zoo import kernels
        y, x = torch.randn(2, 2, 8), torch.randn(2, 8)
        o, o_ref = torch.randn(2, 8, requires_grad=True), torch.randn(2, 8)
        loss = kernels.preference_loss(y, x, o, o_ref, 0.5, 1.0, 0.5)
        loss.backward()
        try:
            kernels.preference_loss(y, x, o, o_ref, 0.5, 1.0, 0.5, backend="triton")
            raise SystemExit("expected an error")
        except RuntimeError as error:
            assert "Triton cannot be imported" in str(error), error
        from rdpo_zoo.cli import main
        try:
            main(["bench", "--quick", "--providers", "eager", "--P", "2", "--D", "64", "--rep-ms", "2"])
        except SystemExit as exit:
            assert not exit.code, exit.code
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_byte_model():
    P, D = 4, 1000
    shared = kbench.make_inputs(kbench.Point(P, D, "fp32", "shared"), "cpu")
    counts = kbench.byte_counts(shared, "preference_loss", "full", n_chunks=3)
    reads = (2 + 1 + 1 + 1) * P * D * 4  # y per branch; x_t, o_θ, o_ref shared
    small = 3 * P * 4 + 8 * P + 4  # a, b, σ; r; loss
    assert counts["min"] == reads + small + P * D * 4
    backward = (2 + 1 + 1) * P * D * 4 + 3 * P * 4 + 8 * P + P * D * 4  # y, x_t, o_θ again; coefficients; c; grad
    assert counts["moved"] == reads + small + 2 * (P * 2 * 3 * 4) + 8 * P + backward
    # at scale the kernels move 10/6 of the one-pass minimum in this layout (the backward re-reads y, x_t, o_θ)
    big = kbench.make_inputs(kbench.Point(8, 16384, "fp32", "shared"), "cpu")
    c = kbench.byte_counts(big, "preference_loss", "full", n_chunks=8)
    assert abs(c["moved"] / c["min"] - 10 / 6) < 0.01
    # Diffusion-DPO's shared ε (stride 0) is read once; x_t is not read
    noised = kbench.make_inputs(kbench.Point(P, D, "bf16", "noised"), "cpu")
    c = kbench.byte_counts(noised, "preference_loss", "forward")
    assert c["min"] == (1 + 0 + 2 + 2) * P * D * 2 + small and c["moved"] is None


def test_validate_result_rejects_bad_rows():
    good = {"schema": kbench.SCHEMA, "op": "preference_loss", "device": "cpu", "device_type": "cpu",
            "versions": {"torch": "x", "triton": None, "python": "3"}, "timestamp": "t", "timer": "t", "notes": [],
            "providers": ["eager"], "grid": {}, "loss": {},
            "rows": [dict(op="preference_loss", provider="eager", mode="full", metric="time", unit="ms",
                          x=dict(P=1, D=2, dtype="fp32", layout="shared"), median=1.0, p20=0.9, p80=1.1)]}
    kbench.validate_result(good)
    bad = json.loads(json.dumps(good))
    bad["rows"][0]["p20"] = 2.0
    with pytest.raises(ValueError, match="p20"):
        kbench.validate_result(bad)
    bad = json.loads(json.dumps(good))
    del bad["rows"][0]["unit"]
    with pytest.raises(ValueError, match="keys"):
        kbench.validate_result(bad)


def test_bench_device_time_on_the_cpu_runs_wall_times_and_says_the_rest_is_cuda_only(tmp_path):
    """--device-time under the interpreter: wall times of the fused op and the eager maths, the copy at each size;
    no device times off CUDA (said in the notes); the JSON validates."""
    from rdpo_zoo.kernels import device_bench

    path = tmp_path / "device.json"
    done = _run(["bench", "--device-time", "--interpret", "--providers", "triton,eager", "--P", "2", "--D", "64",
                 "--rep-ms", "2", "--json", str(path)])
    assert "host-bound" in done.stdout and "CUDA-only" in done.stdout
    result = json.loads(path.read_text())
    device_bench.validate_device_result(result)
    metrics = {(r["provider"], r["mode"], r["metric"]) for r in result["rows"]}
    for provider in ("copy", "triton", "eager"):
        for mode in ("forward", "full"):
            assert (provider, mode, "wall_time") in metrics
    assert ("triton", "full", "wall_speedup_vs_eager") in metrics and ("model", "full", "bytes_min") in metrics
    assert not any(m == "device_time" for _, _, m in metrics)


def test_the_maths_alone_baseline_is_the_reference_loss():
    from rdpo_zoo import losses, reference
    from rdpo_zoo.kernels import device_bench

    for layout in ("shared", "per-branch", "noised"):
        inputs = kbench.make_inputs(kbench.Point(3, 50, "fp32", layout), "cpu")
        args = [inputs[k] for k in ("y", "x_t", "o_theta", "o_ref", "a", "b", "sigma")]
        kwargs = dict(loss="dpo", beta=0.5, penalty="psi", psi_lambda=2.0)
        got = device_bench.maths_loss(*args, kwargs)
        want = losses.preference_loss(reference.paired_log_ratios(*args), **kwargs)
        assert torch.allclose(got, want, rtol=1e-5)
        g_got, g_want = (torch.autograd.grad(v, inputs["o_theta"])[0] for v in (got, want))
        assert torch.allclose(g_got, g_want, rtol=1e-4, atol=1e-8)


def test_bench_train_tiny_times_an_iteration_of_each_rollout_beside_the_plain_loop(tmp_path):
    path = tmp_path / "train.json"
    done = _run(["bench", "--train", "--train-size", "tiny", "--device", "cpu", "--threads", "1",
                 "--json", str(path)], env=_env(RDPO_ZOO_PLUGINS="builtin"))
    assert "UNet evals/s" in done.stdout and "plain optimise s" in done.stdout and "optimise peak MB" in done.stdout
    result = json.loads(path.read_text())
    assert result["schema"] == "rdpo-zoo.bench-train/1" and result["size"] == "tiny"
    configs = {(r["rollout"], r["gradient_checkpointing"]) for r in result["records"]}
    assert configs == {(r, c) for r in ("branching", "trajectory") for c in (False, True)}
    for record in result["records"]:
        s = record["seconds"]
        assert record["pairs"] > 0 and record["unet_evaluations"] > 0 and not record["warm_up"]
        assert 0 < s["reward"] < s["rollout"] < s["total"] and 0 < s["loss"] < s["optimise"] < s["total"]
        assert record["plain_loop"]["optimise_seconds"] > 0 and record["plain_loop"]["loss_seconds"] > 0
        assert record["optimise_peak_memory_mb"] is None and record["peak_memory_mb"] is None  # CUDA's only


def test_bench_imports_without_diffusers_until_train_is_asked_for():
    """`rdpo-zoo bench` (and --host, --device-time) must run on a GPU machine with torch and triton only."""
    code = textwrap.dedent("""
        import builtins, sys
        real = builtins.__import__
        def guarded(name, *args, **kwargs):
            if name.split(".")[0] in ("diffusers", "peft", "transformers", "accelerate"):
                raise ImportError(f"no {name} here")
            return real(name, *args, **kwargs)
        builtins.__import__ = guarded
        import rdpo_zoo.cli.bench_cmd, rdpo_zoo.kernels.bench, rdpo_zoo.kernels.device_bench
        import rdpo_zoo.kernels.host_bench, rdpo_zoo.train_bench
        from click.testing import CliRunner
        out = CliRunner().invoke(rdpo_zoo.cli.bench_cmd.bench, ["--train", "--train-size", "tiny"])
        assert out.exit_code != 0 and "needs the trainer's stack" in out.output, out.output
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
