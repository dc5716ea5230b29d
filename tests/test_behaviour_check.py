"""benchmarks/behaviour_check.py's comparison: bit-for-bit LoRA tensors, metrics but their seconds_* fields."""

import json

import torch
from safetensors.torch import save_file

from benchmarks.behaviour_check import LORA_FILE, compare


def _run(folder, lora, rows):
    (folder / LORA_FILE).parent.mkdir(parents=True)
    save_file(lora, str(folder / LORA_FILE))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_the_comparison_sees_one_ulp_and_ignores_only_timings(tmp_path):
    lora = {"a.lora_A.weight": torch.randn(4, 8), "a.lora_B.weight": torch.zeros(8, 4)}
    rows = [{"iteration": 1, "loss": 0.693, "seconds_rollout": 1.0}]
    base = _run(tmp_path / "a", lora, rows)
    same = _run(tmp_path / "b", {k: v.clone() for k, v in lora.items()}, [{**rows[0], "seconds_rollout": 9.0}])
    assert compare(base, same) == []
    nudged = {k: v.clone() for k, v in lora.items()}
    nudged["a.lora_A.weight"][0, 0] = torch.nextafter(nudged["a.lora_A.weight"][0, 0], torch.tensor(1.0))
    other_metric = [{**rows[0], "loss": 0.6930000001}]
    problems = compare(base, _run(tmp_path / "c", nudged, other_metric))
    assert any("a.lora_A.weight differs" in p for p in problems)
    assert any("line 1 loss" in p for p in problems)
