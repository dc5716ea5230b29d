"""The paper study's statistics (benchmarks/paper/stats.py) against tabulated values."""

import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def stats(monkeypatch):
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks.paper import stats

    return stats


# Student's t quantiles from the standard tables (e.g. NIST/SEMATECH e-Handbook, Table 1.3.6.7.2)
T_TABLE = [(0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 4, 2.7764), (0.975, 9, 2.2622), (0.975, 30, 2.0423),
           (0.80, 2, 1.0607), (0.80, 4, 0.9410), (0.95, 5, 2.0150), (0.995, 10, 3.1693), (0.90, 1, 3.0777)]


@pytest.mark.parametrize("p, df, expected", T_TABLE)
def test_t_quantiles_match_the_tables(stats, p, df, expected):
    assert stats.t_quantile(p, df) == pytest.approx(expected, abs=1e-4)
    assert stats.t_quantile(1 - p, df) == pytest.approx(-expected, abs=1e-4)
    assert stats.t_cdf(expected, df) == pytest.approx(p, abs=1e-5)


def test_t_tends_to_the_normal(stats):
    assert stats.t_quantile(0.975, 10**6) == pytest.approx(1.959964, abs=1e-4)


def test_paired_difference_interval_and_detectable_effect(stats):
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 1.0, 2.0, 3.5, 4.0]
    d = stats.paired_difference(a, b)  # differences 0.5, 1, 1, 0.5, 1: mean 0.8, sd 0.27386
    sd = math.sqrt(sum((x - 0.8) ** 2 for x in (0.5, 1, 1, 0.5, 1)) / 4)
    assert d["n"] == 5 and d["mean"] == pytest.approx(0.8)
    assert d["se"] == pytest.approx(sd / math.sqrt(5))
    assert d["low"] == pytest.approx(0.8 - 2.7764 * sd / math.sqrt(5), abs=1e-4)
    assert d["detectable"] == pytest.approx((2.7764 + 0.9410) * sd / math.sqrt(5), abs=1e-4)
    assert stats.verdict(d).startswith("higher")
    # unpaired spread does not enter: adding a per-seed offset to both sides changes nothing
    shifted = stats.paired_difference([x + 10 * i for i, x in enumerate(a)], [x + 10 * i for i, x in enumerate(b)])
    assert shifted["se"] == pytest.approx(d["se"])


def test_paired_difference_skips_missing_seeds_and_refuses_unpaired_lists(stats):
    d = stats.paired_difference([1.0, None, 3.0], [0.0, 1.0, float("nan")])
    assert d["n"] == 1 and math.isnan(d["low"]) and stats.verdict(d).startswith("not testable")
    with pytest.raises(ValueError, match="b: expected one value per value of a"):
        stats.paired_difference([1.0, 2.0], [1.0])
    assert stats.verdict(stats.paired_difference([1.0, -1.0, 0.5], [0.0, 0.0, 0.0])).startswith("no detectable")


def test_every_long_horizon_verdict_names_its_effect_interval_and_detectable_effect(monkeypatch, tmp_path, stats):
    import json

    from benchmarks.paper import claims, doc

    monkeypatch.setattr(claims, "RESULTS", tmp_path)
    profile = claims.profile("ci")
    diff = stats.paired_difference([0.5, 0.7, 0.4], [0.3, 0.45, 0.25])
    data = {"iterations": 150, "setting": {"lr": 3e-3, "guidance_step": 0.2}, "setting_reason": "degrades",
            "best_ratio": "RDPO λ/β=1", "tiers": [{"tier": 0, "status": "run", "done": 4, "runs": 4},
                                                 {"tier": 2, "status": "not run", "done": 0, "runs": 12}],
            "verdicts": [{"claim": "Fig. 3c", "question": "RDPO λ/β=1 − RDPO*: test reward at the end",
                          "difference": diff, "verdict": stats.verdict(diff)}]}
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "long-horizon.json").write_text(json.dumps(data))
    line = doc.verdicts(profile)[0]
    assert f"{diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}], detectable {diff['detectable']:.4f}" in line
    assert "tier 2 not run (0/12)" in line and "higher (interval above 0)" in line


def test_reward_matched_iteration_is_the_first_validation_checkpoint_at_the_target(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.syspath_prepend(ROOT)
    from benchmarks.paper import long_horizon

    validation = [(0, 0.30), (10, 0.40), (20, 0.38), (30, 0.45), (40, 0.44)]
    records = [{"iteration": i, "sets": {"validation": {"rewards": {"world-aesthetic": {"mean": v}}}}}
               for i, v in validation]
    monkeypatch.setattr(long_horizon, "load_checkpoints", lambda spec: records)
    spec = SimpleNamespace(reward="world-aesthetic")
    assert long_horizon.reward_matched_iteration(spec, 0.39) == 10
    assert long_horizon.reward_matched_iteration(spec, 0.41) == 30  # not 20, which fell back below
    assert long_horizon.reward_matched_iteration(spec, 0.50) == 30  # never reached: its validation peak
