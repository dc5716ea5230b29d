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


def test_every_cached_run_is_found_by_the_key_of_its_stored_spec():
    """Changes to the package's settings (new fields, new defaults) must not orphan the study's cached runs. The
    learning-rate pilot ran on an earlier snapshot of the embedded weights: its keys differ in ``weights`` alone."""
    import hashlib

    from benchmarks.paper.runs import RUNS, RunSpec

    folders = [p for p in RUNS.iterdir() if (p / "spec.json").is_file()]
    assert len(folders) > 50
    other_weights = 0
    for folder in folders:
        stored = json.loads((folder / "spec.json").read_text())
        spec = RunSpec.from_json(stored["spec"])
        key = json.loads(json.dumps(spec.key(), default=str))
        assert hashlib.sha256(json.dumps(stored["key"], sort_keys=True, default=str).encode()).hexdigest()[:16] \
            == folder.name
        if stored["key"]["weights"] != key["weights"]:
            other_weights += 1
            key["weights"] = stored["key"]["weights"]
        assert key == stored["key"], folder.name
    assert other_weights <= 6


def test_threads_and_trackers_stay_out_of_the_cache_key(monkeypatch):
    """Settings that cannot change a run's numbers (CPU threads, --report-to) do not rename its cached folder."""
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks.paper import runs

    spec = runs.RunSpec("d3po")
    assert not {"threads", "report_to", "output_dir"} & set(spec.key()["config"]["run"])
    assert runs.RunSpec("d3po", run={"threads": 3, "report_to": "tensorboard"}).digest() == spec.digest()
