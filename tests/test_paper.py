"""The paper study's pipeline end to end (benchmarks/paper): the CI profile of Fig. 1 on the test model part.

It trains three tiny D3PO runs (one per reward) to a UNet budget, probes the fixed reference pairs, evaluates, caches
by config hash, and writes the claim's JSON, markdown and PNG; a second call finds every run cached and trains nothing.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _paper(tmp_path, *args):
    env = {**os.environ, "RDPO_PAPER_RESULTS": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "benchmarks.paper", *args, "--profile", "ci", "--model", "test-tiny",
                           "--jobs", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_fig1_ci_profile_end_to_end_and_cached(tmp_path):
    done = _paper(tmp_path, "fig1")
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "ci" / "fig1.json").read_text())
    assert [row["done"] for row in data["rows"]] == [True, True, True]
    for row in data["rows"]:
        assert row["unet_calls"] >= 150  # the budget was spent, and counted
        assert row["ref_r_l_final"] == row["ref_r_l_final"]  # the reference-pair probe ran
    assert (tmp_path / "ci" / "fig1.png").stat().st_size > 0
    assert "| world-aesthetic |" in (tmp_path / "ci" / "fig1.md").read_text()
    runs = [p for p in (tmp_path / "runs").iterdir() if (p / "done").is_file()]
    assert len(runs) == 3
    for run in runs:
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert metrics[0]["iteration"] == 0 and metrics[0]["ref_r_l"] == 0.0  # policy = reference at the start
        assert {"r_w", "r_l", "pair_mean", "unet_calls_total", "ref_r_l"} <= set(metrics[-1])
        assert not (run / "lora").exists()  # no weights kept
    again = _paper(tmp_path, "fig1")
    assert again.returncode == 0 and "runs to train" not in again.stdout  # everything cached


def test_versioned_settings_enter_the_cache_key_only_where_used(monkeypatch):
    """A change of what gradient guidance means reruns the guided runs and no other: its version is hashed into
    the runs that use it, and the key of every other run is what it was."""
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks.paper import runs

    guided, plain = runs.RunSpec("tailorpo-g"), runs.RunSpec("d3po")
    assert guided.key()["setting_versions"] == {"gradient_guidance": runs.SETTING_VERSIONS["gradient_guidance"]}
    assert "setting_versions" not in plain.key()
    before = guided.digest(), plain.digest()
    monkeypatch.setitem(runs.SETTING_VERSIONS, "gradient_guidance", 999)
    assert guided.digest() != before[0] and plain.digest() == before[1]


def test_threads_and_trackers_stay_out_of_the_cache_key(monkeypatch):
    """Settings that cannot change a run's numbers (CPU threads, --report-to) do not rename its cached folder."""
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks.paper import runs

    spec = runs.RunSpec("d3po")
    assert not {"threads", "report_to", "output_dir"} & set(spec.key()["config"]["run"])
    assert runs.RunSpec("d3po", run={"threads": 3, "report_to": "tensorboard"}).digest() == spec.digest()


def test_every_cached_run_keeps_its_key_unless_its_behaviour_changed(monkeypatch):
    """A new method setting enters the key only away from the behaviour before it: every cached run of the
    current weights recomputes, from its stored spec, the name of its own folder, except the DDPO and D3PO runs,
    which now step once per trajectory, and the SPO runs with a threshold, which now filter pairs with SPO's softmax
    rule (their behaviour changed, so their keys must)."""
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks.paper import runs

    folder = os.path.join(ROOT, "benchmarks", "results", "paper", "runs")
    stored = [os.path.join(folder, name) for name in sorted(os.listdir(folder))
              if os.path.isfile(os.path.join(folder, name, "spec.json"))]
    if not stored:
        pytest.skip("no cached runs in this checkout")
    weights = runs._weights_id("tiny")
    kept, moved = [], []
    for path in stored:
        data = json.load(open(os.path.join(path, "spec.json")))
        spec = runs.RunSpec.from_json(data["spec"])
        if data["key"]["weights"] != weights:
            continue  # made on earlier embedded weights: no longer read by any report
        config = spec.key()["config"]
        method = config["method"]
        if spec.digest() == os.path.basename(path):
            # a run whose key holds is either untouched by the two changes or was made after them (a rerun)
            if "optimiser_step" in method:
                assert method["optimiser_step"] == "trajectory" and spec.preset in ("ddpo", "d3po"), path
            if spec.preset == "spo" and method["threshold"]:
                assert data["key"]["config"]["run"]["gap_rule"] == "softmax", path
            kept.append(path)
        elif spec.preset == "spo":
            assert method["threshold"] and config["run"]["gap_rule"] == "softmax", path
            assert data["key"]["config"]["run"]["gap_rule"] == "raw"
            moved.append(path)
        else:
            assert method["optimiser_step"] == "trajectory" and spec.preset in ("ddpo", "d3po"), path
            assert "optimiser_step" not in data["key"]["config"]["method"]
            moved.append(path)
    assert len(kept) >= 40  # (the moved ones leave the cache once rerun: none need remain)
    # guidance_step and gap_rule, method settings now, are keyed where they were (run) so that the keys above hold
    assert {"guidance_step", "gap_rule"} <= set(runs.RunSpec("tailorpo").key()["config"]["run"])
    assert runs.RunSpec("spo").key()["config"]["run"]["gap_rule"] == "softmax"
    assert runs.RunSpec("spo", overrides={"threshold": 0.0}).key()["config"]["run"]["gap_rule"] == "raw"
    assert runs.RunSpec("d3po").key()["config"]["method"]["optimiser_step"] == "trajectory"
    assert runs.RunSpec("ddpo").key()["config"]["method"]["optimiser_step"] == "trajectory"
    assert "optimiser_step" not in runs.RunSpec("tailorpo").key()["config"]["method"]


def test_long_horizon_ci_profile_end_to_end(tmp_path):
    """The long-horizon claim on the CI profile: RDPO* and RDPO (λ = β) on two seeds, each evaluated at iteration 0
    and 1 on the held-out validation and test sets (rewards, checker, spread, on-policy and reference-pair
    log-ratios), its curves plotted, its comparisons paired by seed with t-intervals and detectable effects."""
    done = _paper(tmp_path, "long-horizon")
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "ci" / "long-horizon.json").read_text())
    assert data["setting"] == {"lr": 3e-3, "guidance_step": 0.2} and data["grid"][0]["done"]
    assert [t["status"] for t in data["tiers"]][:2] == ["run", "run"]
    assert {a["name"]: a["done"] for a in data["arms"]} == {"RDPO*": 2, "RDPO λ/β=1": 2}
    runs = [p for p in (tmp_path / "runs").iterdir() if (p / "done").is_file()]
    assert len(runs) == 4
    for run in runs:
        records = [json.loads(line) for line in (run / "checkpoints.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in records] == [0, 1]
        for held in ("validation", "test"):
            entry = records[-1]["sets"][held]
            assert set(entry["rewards"]) == {"world-aesthetic", "compressibility", "world-fidelity"}
            assert len(entry["rewards"]["world-aesthetic"]["values"]) == 4  # 2 prompts × 2 seeds
            assert {"all", "colour"} <= set(entry["checker"]) and entry["spread"]["n"] == 2
            for pairs in ("pairs", "reference_pairs"):
                assert {"r_w", "r_l", "pair_mean", "psi_active", "beta_margin", "psi_term",
                        "loss_minus_log2"} <= set(entry[pairs])
            assert records[0]["sets"][held]["pairs"]["r_l"] == 0.0  # policy = reference at iteration 0
        # validation and test differ in noise: not the same samples
        assert (records[0]["sets"]["validation"]["rewards"]["world-aesthetic"]["values"]
                != records[0]["sets"]["test"]["rewards"]["world-aesthetic"]["values"])
        assert not list(run.glob("checkpoint-*")) and not (run / "lora").exists()  # no weights kept
    first = next(v for v in data["verdicts"] if v["question"] == "RDPO λ/β=1 − RDPO*: test reward at the end")
    diff = first["difference"]
    assert diff["n"] == 2 and diff["low"] <= diff["mean"] <= diff["high"] and diff["detectable"] > 0
    md = (tmp_path / "ci" / "long-horizon.md").read_text()
    assert "detectable" in md and "not in this profile" in md
    for claim in ("fig1", "fig3"):
        assert (tmp_path / "ci" / f"long-horizon-{claim}.png").stat().st_size > 0
    listed = _paper(tmp_path, "long-horizon", "--list")
    assert listed.returncode == 0 and "todo" not in listed.stdout  # every run cached


@pytest.fixture()
def test_parts():
    """The test model part, registered in this process for the in-process runs (and removed after them)."""
    import rdpo_zoo
    from train_parts import TestParts

    name = rdpo_zoo.register(TestParts, name="test-parts")
    yield
    rdpo_zoo.unregister(name)


def _long_ci_spec(monkeypatch, tmp_path, iterations):
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks.paper import claims, long_horizon, runs

    monkeypatch.setattr(runs, "RUNS", tmp_path / "runs")
    monkeypatch.setitem(claims.MODEL, "name", "test-tiny")
    spec = long_horizon.grid_specs(claims.profile("ci"))[0]
    spec.max_iterations = iterations
    return runs, spec


def test_an_interrupted_checkpointed_run_resumes_where_it_stopped(monkeypatch, tmp_path, test_parts):
    """A long run killed after its checkpoint at iteration 1 resumes from it (weights, optimiser, metrics and
    held-out records up to it) and ends where an uninterrupted run ends."""
    import torch

    torch.set_num_threads(1)
    runs, spec = _long_ci_spec(monkeypatch, tmp_path, iterations=2)
    original = runs.HeldOutEvaluation.__call__
    state = {"interrupt": True}

    def interrupted(self, iteration):
        original(self, iteration)
        if iteration == 1 and state["interrupt"]:
            raise KeyboardInterrupt("killed after the checkpoint of iteration 1")

    monkeypatch.setattr(runs.HeldOutEvaluation, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runs.execute(spec, log=lambda m: None)
    assert not runs.is_done(spec) and (spec.folder() / "checkpoint-000001").is_dir()
    state["interrupt"] = False
    runs.execute(spec, log=lambda m: None)
    resumed = runs.load_checkpoints(spec)
    metrics = runs.load_metrics(spec)
    assert [r["iteration"] for r in resumed] == [0, 1, 2]
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
    monkeypatch.setattr(runs, "RUNS", tmp_path / "fresh")
    runs.execute(spec, log=lambda m: None)
    fresh = runs.load_checkpoints(spec)
    assert resumed[-1]["sets"]["test"]["rewards"] == fresh[-1]["sets"]["test"]["rewards"]
    assert resumed[-1]["sets"]["test"]["pairs"]["r_l"] == fresh[-1]["sets"]["test"]["pairs"]["r_l"] != 0.0
