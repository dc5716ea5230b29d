"""The paper's claims, one function pair each: ``specs(profile)`` (the training runs it needs) and
``report(profile)`` (reads the cached runs, writes ``<claim>.json``, ``<claim>.md`` and ``<claim>.png`` under
``benchmarks/results/paper/<profile>/``). A report never trains: runs not in the cache are listed as "not run".

Every training run uses the same learning rate, the same budget of UNet evaluations, the same training prompts
(the embedded world's ``train`` set) and the same seeds; each preset keeps its other settings.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Optional

from benchmarks.paper.profiles import PROFILES, Profile
from benchmarks.paper.runs import (ALL_REWARDS, RESULTS, ROOT, RUNS, RunSpec, base_eval, is_done, load_eval,
                                   load_metrics)

PRESETS = ("ddpo", "d3po", "diffusion-dpo", "spo", "tailorpo", "tailorpo-g", "rdpo-star", "rdpo")
PAPER_STEPS = (20, 16, 12, 8, 4)
PAPER_PSI_LAMBDA = 100.0  # RDPO Sec. 5 (printed "1, 00"; its ablation tries 10, 100, 10 000)
PSI = {"penalty": "psi", "penalty_options": {"lambda": PAPER_PSI_LAMBDA}}
SHORT = {"world-aesthetic": "aesthetic", "compressibility": "compress.", "world-fidelity": "fidelity"}

# The model every spec trains; the CI's test sets it to its tiny random part.
MODEL = {"name": "tiny", "rewards": ALL_REWARDS, "train_reward": "world-aesthetic"}


def _spec(p: Profile, preset: str, reward: Optional[str] = None, seed: int = 0, overrides=None, label: str = "",
          learning_rate: Optional[float] = None, budget: Optional[int] = None) -> RunSpec:
    overrides = dict(overrides or {})
    if preset == "rdpo":  # the paper's claims are about its RDPO: its λ = 100, not the preset's (our sweep's)
        overrides.setdefault("penalty_options", {"lambda": PAPER_PSI_LAMBDA})
    return RunSpec(preset, reward=reward or MODEL["train_reward"], seed=seed, budget=budget or p.budget,
                   learning_rate=learning_rate or p.learning_rate, overrides=overrides, run=dict(p.run),
                   model=MODEL["name"], probe_prompts=p.probe_prompts, eval_sets=dict(p.eval_sets),
                   eval_seeds=tuple(p.eval_seeds), eval_rewards=tuple(MODEL["rewards"]), label=label or preset)


def _base(p: Profile) -> dict:
    return base_eval(MODEL["name"], dict(p.eval_sets), tuple(p.eval_seeds), tuple(MODEL["rewards"]))


# --------------------------------------------------------------------------------------------------- helpers
def mean_se(values) -> dict:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(values)
    if not n:
        return {"mean": float("nan"), "se": float("nan"), "n": 0}
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else float("nan")
    return {"mean": mean, "se": se, "n": n}


def fmt(stat: dict, digits: int = 4, kind: str = "f") -> str:
    """``mean ± s.e.`` (``kind="g"``: significant digits, for log-ratios of order 1e-4)."""
    if not stat or stat.get("n", 1) == 0 or stat["mean"] != stat["mean"]:
        return "not run"
    if stat["se"] != stat["se"]:
        return f"{stat['mean']:.{digits}{kind}}"
    return f"{stat['mean']:.{digits}{kind}} ± {stat['se']:.{digits}{kind}}"


def series(spec: RunSpec, key: str, start: int = 1):
    xs, ys = [], []
    for row in load_metrics(spec):
        if row["iteration"] >= start and isinstance(row.get(key), (int, float)):
            xs.append(row["unet_calls_total"])
            ys.append(row[key])
    return xs, ys


def slope(xs, ys) -> float:
    """Least-squares slope of y on x (per 1000 UNet evaluations)."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return 1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")


def tail_mean(values, fraction: float = 1 / 3) -> float:
    if not values:
        return float("nan")
    k = max(1, int(math.ceil(len(values) * fraction)))
    return sum(values[-k:]) / k


def head_mean(values, fraction: float = 1 / 3) -> float:
    if not values:
        return float("nan")
    k = max(1, int(math.ceil(len(values) * fraction)))
    return sum(values[:k]) / k


def eval_values(spec: RunSpec, prompt_set: str, reward: str):
    if not is_done(spec):
        return None
    return load_eval(spec)["sets"][prompt_set]["rewards"][reward]["values"]


def paired_gain(spec: RunSpec, base: dict, prompt_set: str, reward: str) -> Optional[dict]:
    tuned = eval_values(spec, prompt_set, reward)
    if tuned is None:
        return None
    ref = base["sets"][prompt_set]["rewards"][reward]["values"]
    return mean_se([t - b for t, b in zip(tuned, ref)])


def run_summary(spec: RunSpec) -> dict:
    """The numbers of one run that the tables use."""
    if not is_done(spec):
        return {"done": False, "folder": os.path.relpath(spec.folder(), ROOT)}
    metrics = [m for m in load_metrics(spec) if m["iteration"] >= 1]
    evaluation = load_eval(spec)
    out = {"done": True, "folder": os.path.relpath(spec.folder(), ROOT),
           "iterations": len(metrics), "unet_calls": metrics[-1]["unet_calls_total"] if metrics else 0,
           "train_seconds": evaluation.get("train_seconds"),
           "pairs_kept_fraction": mean_se([m.get("pairs_kept_fraction") for m in metrics])["mean"],
           "optimiser_pairs": sum(m.get("pairs", 0) for m in metrics), **optimisation_counts(spec, metrics)}
    for key in ("reward_mean", "r_w", "r_l", "pair_mean", "margin", "accuracy", "psi_active", "loss", "ref_r_w",
                "ref_r_l", "ref_pair_mean"):
        values = [m[key] for m in metrics if isinstance(m.get(key), (int, float))]
        out[key + "_first"] = head_mean(values)
        out[key + "_last"] = tail_mean(values)
    out["eval"] = {s: {r: {k: v for k, v in d.items() if k != "values"} for r, d in data["rewards"].items()}
                   for s, data in evaluation["sets"].items()}
    return out


def optimisation_counts(spec: RunSpec, metrics: list) -> dict:
    """Optimiser steps and prompts seen by a run: the steps as recorded (``optimiser_steps``), or for a run made
    before they were, by the rule of the code that made it: ⌈pairs / minibatch⌉ per inner epoch of an iteration."""
    run = spec.train_config("-").run
    steps = 0
    for m in metrics:
        if "optimiser_steps" in m:
            steps += m["optimiser_steps"]
        elif m.get("pairs"):
            steps += run.inner_epochs * math.ceil(m["pairs"] / run.minibatch_size)
    return {"optimiser_steps": steps, "prompts_seen": len(metrics) * run.prompts_per_iteration}


def _out_dir(p: Profile) -> Path:
    folder = RESULTS / p.name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write(p: Profile, claim: str, data: dict, markdown: str) -> None:
    folder = _out_dir(p)
    (folder / f"{claim}.json").write_text(json.dumps(data, indent=1, default=str))
    (folder / f"{claim}.md").write_text(markdown)


def _budget_line(p: Profile, specs, pilot: bool = False) -> str:
    done = [s for s in specs if is_done(s)]
    spent = [run_summary(s)["unet_calls"] for s in done]
    secs = [run_summary(s)["train_seconds"] for s in done]
    line = (f"Budget: {p.budget} UNet sample-evaluations per run (rollout + training forward passes; a CFG pair "
            f"counts 2); every run stops at the end of the first iteration that reaches it")
    if spent:
        line += f" (spent {min(spent)}–{max(spent)}; {min(secs):.0f}–{max(secs):.0f} s of training on one CPU thread)"
    lr = "learning rates as listed" if pilot else f"learning rate {p.learning_rate:g} for every method"
    line += (f". The {lr}; {p.run.get('prompts_per_iteration')} prompts per "
             f"iteration, minibatch {p.run.get('minibatch_size')} pairs. {len(done)}/{len(specs)} runs done.")
    return line


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------------------------------- lr pilot
def lr_pilot_specs(p: Profile):
    return [_spec(p, preset, learning_rate=lr, budget=p.pilot_budget, label=f"{preset} lr={lr:g}")
            for preset in ("d3po", "tailorpo") for lr in p.pilot_lrs]


def lr_pilot_report(p: Profile) -> dict:
    base = _base(p)
    rows = []
    for spec in lr_pilot_specs(p):
        summary = run_summary(spec)
        gain = paired_gain(spec, base, "train", MODEL["train_reward"]) if summary["done"] else None
        rows.append({"preset": spec.preset, "lr": spec.learning_rate, **summary, "train_set_gain": gain})
    md = [f"# Learning-rate pilot ({p.name})", "", _budget_line(p, lr_pilot_specs(p), pilot=True).replace(
        str(p.budget), str(p.pilot_budget), 1), "",
        "Trained on the aesthetic-like reward; the gain is over the base model on the same noise (train-set prompts).",
        "", "| preset | lr | training reward first → last third | margin (last) | r_l (last) | train-set gain |",
        "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if not r["done"]:
            md.append(f"| {r['preset']} | {r['lr']:g} | not run | | | |")
            continue
        md.append(f"| {r['preset']} | {r['lr']:g} | {r['reward_mean_first']:.4f} → {r['reward_mean_last']:.4f} | "
                  f"{r['margin_last']:.3g} | {r['r_l_last']:.3g} | {fmt(r['train_set_gain'])} |")
    data = {"claim": "lr-pilot", "profile": p.name, "budget": p.pilot_budget, "rows": rows}
    _write(p, "lr-pilot", data, "\n".join(md) + "\n")
    return data


# ------------------------------------------------------------------------------------------------------ Fig. 1
def fig1_specs(p: Profile):
    return [_spec(p, "d3po", reward=r, label=f"d3po / {SHORT.get(r, r)}") for r in MODEL["rewards"]]


def fig1_report(p: Profile) -> dict:
    specs = fig1_specs(p)
    rows = []
    for spec in specs:
        row = {"reward": spec.reward, **run_summary(spec)}
        if row["done"]:
            for key in ("r_w", "r_l", "pair_mean", "ref_r_w", "ref_r_l", "ref_pair_mean"):
                xs, ys = series(spec, key, start=1 if not key.startswith("ref") else 0)
                row[key + "_slope"] = slope(xs, ys)
                row[key + "_final"] = ys[-1] if ys else float("nan")
            xs, rl = series(spec, "r_l")
            _, pm = series(spec, "pair_mean")
            rel = [a - b for a, b in zip(rl, pm)]
            row["r_l_minus_pair_mean_slope"] = slope(xs, rel)
            row["r_l_minus_pair_mean_last"] = tail_mean(rel)
            xs, rrl = series(spec, "ref_r_l", 0)
            _, rpm = series(spec, "ref_pair_mean", 0)
            rel = [a - b for a, b in zip(rrl, rpm)]
            row["ref_r_l_minus_pair_mean_slope"] = slope(xs, rel)
            row["ref_r_l_minus_pair_mean_last"] = tail_mean(rel)
            row["raw_rises"] = row["r_l_slope"] > 0 and row["r_l_last"] > 0
            row["relative_rises"] = row["r_l_minus_pair_mean_slope"] > 0
            row["ref_rises_above_zero"] = row["ref_r_l_slope"] > 0 and row["ref_r_l_final"] > 0
        rows.append(row)
    md = [f"# Fig. 1: under D3PO, does the dispreferred log-ratio r_l keep increasing? ({p.name})", "",
          _budget_line(p, specs), "",
          "r = log π_θ/π_ref per step pair, mean over the latent elements (the presets' `reduction=mean`). "
          "*Training pairs*: the pairs of each iteration, sampled by the current policy (their pair mean estimates "
          "KL(π_θ‖π_ref) ≥ 0). *Reference pairs*: a fixed set sampled once from the reference model by the same "
          "rollout (their pair mean estimates −KL(π_ref‖π_θ) ≤ 0). Slopes are per 1000 UNet evaluations; 'last' is "
          "the mean of the last third of the iterations.", "",
          "| reward | r_w last | r_l last | pair mean last | r_l slope | r_l − pair mean (last, slope) | ref r_l final "
          "| ref pair mean final | ref r_l − pair mean (last) | raw r_l rises | r_l rises vs pair mean | ref r_l > 0 and rising |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if not r["done"]:
            md.append(f"| {r['reward']} | not run |" + " |" * 11)
            continue
        md.append(
            f"| {r['reward']} | {r['r_w_last']:.3g} | {r['r_l_last']:.3g} | {r['pair_mean_last']:.3g} | "
            f"{r['r_l_slope']:.3g} | {r['r_l_minus_pair_mean_last']:.3g}, {r['r_l_minus_pair_mean_slope']:.3g} | "
            f"{r['ref_r_l_final']:.3g} | {r['ref_pair_mean_final']:.3g} | {r['ref_r_l_minus_pair_mean_last']:.3g} | "
            f"{'yes' if r['raw_rises'] else 'no'} | {'yes' if r['relative_rises'] else 'no'} | "
            f"{'yes' if r['ref_rises_above_zero'] else 'no'} |")
    data = {"claim": "fig1", "profile": p.name, "budget": p.budget, "rows": rows}
    _write(p, "fig1", data, "\n".join(md) + "\n")
    plt = _plt()
    fig, axes = plt.subplots(2, len(specs), figsize=(4.2 * len(specs), 6.5), squeeze=False)
    for j, spec in enumerate(specs):
        for i, (prefix, title, start) in enumerate((("", "training pairs (policy's own)", 1),
                                                    ("ref_", "fixed reference pairs", 0))):
            ax = axes[i][j]
            for key, style in (("r_w", "-"), ("r_l", "-"), ("pair_mean", "--")):
                xs, ys = series(spec, prefix + key, start)
                if xs:
                    ax.plot(xs, ys, style, label=key.replace("_", " "))
            ax.axhline(0, color="gray", lw=0.5)
            ax.set_title(f"{SHORT.get(spec.reward, spec.reward)}: {title}", fontsize=9)
            ax.set_xlabel("UNet evaluations")
            if j == 0:
                ax.set_ylabel("log π_θ/π_ref (mean per element)")
            ax.legend(fontsize=7)
    fig.suptitle(f"Fig. 1 (D3PO), {p.name} profile", fontsize=10)
    fig.tight_layout()
    fig.savefig(_out_dir(p) / "fig1.png", dpi=110)
    plt.close(fig)
    return data


# ------------------------------------------------------------------------------------------------------ Fig. 3
#: the paper's ablation (10, 100, 10 000) and λ ≤ β, where the main job's runs found Ψ no longer erases the guided
#: gain (docs/rollout.md)
FIG3_LAMBDAS = (0.1, 1.0, 10.0, 100.0, 10000.0)


def fig3_specs(p: Profile):
    specs = [_spec(p, "rdpo", overrides={"penalty_options": {"lambda": lam}}, label=f"rdpo λ={lam:g}")
             for lam in FIG3_LAMBDAS]
    specs.append(_spec(p, "rdpo-star", label="rdpo-star (no Ψ)"))
    specs.append(_spec(p, "d3po", label="d3po"))
    specs.append(_spec(p, "d3po", overrides=PSI, label="d3po + Ψ (λ=100)"))
    return specs


def _curve_table(p: Profile, specs, base) -> list:
    rows = []
    for spec in specs:
        s = run_summary(spec)
        s["label"] = spec.label
        if s["done"]:
            s["eval_gain_ood"] = paired_gain(spec, base, "ood", spec.reward)
            xs, ys = series(spec, "reward_mean")
            s["reward_drop_from_peak"] = (max(ys) - tail_mean(ys)) if ys else float("nan")
        rows.append(s)
    return rows


def fig3_report(p: Profile) -> dict:
    specs = fig3_specs(p)
    base = _base(p)
    rows = _curve_table(p, specs, base)
    md = [f"# Fig. 3: Ψ and the dispreferred log-ratio; the λ sweep ({p.name})", "", _budget_line(p, specs), "",
          "Trained on the aesthetic-like reward, seed 0. r_l on the training pairs and on the fixed reference pairs; "
          "'Ψ active' is the fraction of training pairs with r_l > 0 (where Ψ pushes). Gain: tuned − base on the OOD "
          "prompts, same noise (mean ± s.e. over samples).", "",
          "| run | r_l first → last | ref r_l first → last | Ψ active (last) | margin (last) | training reward first → last "
          "| drop from peak | OOD gain |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if not r["done"]:
            md.append(f"| {r['label']} | not run |" + " |" * 6)
            continue
        md.append(f"| {r['label']} | {r['r_l_first']:.3g} → {r['r_l_last']:.3g} | {r['ref_r_l_first']:.3g} → "
                  f"{r['ref_r_l_last']:.3g} | {r['psi_active_last']:.2f} | {r['margin_last']:.3g} | "
                  f"{r['reward_mean_first']:.4f} → {r['reward_mean_last']:.4f} | {r['reward_drop_from_peak']:.4f} | "
                  f"{fmt(r['eval_gain_ood'])} |")
    data = {"claim": "fig3", "profile": p.name, "budget": p.budget, "rows": rows}
    _write(p, "fig3", data, "\n".join(md) + "\n")
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for spec in specs:
        if not is_done(spec):
            continue
        if spec.preset == "rdpo" or spec.preset == "rdpo-star":
            axes[0].plot(*series(spec, "reward_mean"), label=spec.label)
        axes[1].plot(*series(spec, "r_l"), label=spec.label)
        axes[2].plot(*series(spec, "ref_r_l", 0), label=spec.label)
    for ax, title in zip(axes, ("(a) training reward, λ sweep", "(b) r_l on training pairs",
                                "(b') r_l on fixed reference pairs")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("UNet evaluations")
        ax.axhline(0, color="gray", lw=0.5) if ax is not axes[0] else None
        ax.legend(fontsize=7)
    fig.suptitle(f"Fig. 3, {p.name} profile", fontsize=10)
    fig.tight_layout()
    fig.savefig(_out_dir(p) / "fig3.png", dpi=110)
    plt.close(fig)
    return data


# ------------------------------------------------------------------------------------------------------ Table 3
TABLE3_PRESETS = ("d3po", "spo", "tailorpo")
# SPO's threshold (0.3 in units of the reward's scale) can drop every pair here; this variant keeps them all, so that
# Ψ has pairs to act on. Its runs come last in the queue (claim "spo-threshold-0").
SPO0 = {"threshold": 0.0}


#: (preset, overrides, row label): each preset without and with Ψ; SPO at threshold 0 is its own claim (queued last)
TABLE3_VARIANTS = tuple((preset, o, f"{preset}{' + Ψ' if o else ''}") for preset in TABLE3_PRESETS for o in ({}, PSI))
SPO0_VARIANTS = tuple(("spo", {**SPO0, **o}, f"spo, threshold 0{' + Ψ' if o else ''}") for o in ({}, PSI))


def _variant_specs(p: Profile, variants) -> list:
    return [_spec(p, preset, seed=seed, overrides=o, label=label) for preset, o, label in variants for seed in p.seeds]


def table3_specs(p: Profile):
    return _variant_specs(p, TABLE3_VARIANTS)


def spo0_specs(p: Profile):
    return _variant_specs(p, SPO0_VARIANTS)


def _seed_stat(specs, fn: Callable) -> dict:
    return mean_se([fn(s) for s in specs if is_done(s)])


def table3_report(p: Profile) -> dict:
    base = _base(p)
    reward = MODEL["train_reward"]
    rows = []
    for preset, o, method in TABLE3_VARIANTS + SPO0_VARIANTS:
        specs = [_spec(p, preset, seed=s, overrides=o) for s in p.seeds]
        rows.append({
            "method": method, "runs_done": sum(is_done(s) for s in specs),
            "eval_ood": _seed_stat(specs, lambda s: mean_se(eval_values(s, "ood", reward))["mean"]),
            "gain_ood": _seed_stat(specs, lambda s: paired_gain(s, base, "ood", reward)["mean"]),
            "train_reward_last": _seed_stat(specs, lambda s: run_summary(s)["reward_mean_last"]),
            "r_l_last": _seed_stat(specs, lambda s: run_summary(s)["r_l_last"]),
            "ref_r_l_last": _seed_stat(specs, lambda s: run_summary(s)["ref_r_l_last"]),
            "pairs_kept": _seed_stat(specs, lambda s: run_summary(s)["pairs_kept_fraction"]),
        })
    base_ood = mean_se(base["sets"]["ood"]["rewards"][reward]["values"])
    md = [f"# Table 3: adding Ψ (λ = 100) to D3PO, SPO and TailorPO ({p.name})", "", _budget_line(p, table3_specs(p)),
          "", f"Reward: {reward}; evaluated on the OOD prompts ({p.eval_sets.get('ood')} prompts × seeds "
          f"{list(p.eval_seeds)}); mean ± s.e. over training seeds {list(p.seeds)}. Base model: {fmt(base_ood)}.", "",
          "| method | OOD reward | OOD gain over base | training reward (last third) | r_l (last) | ref r_l (last) "
          "| pairs kept | runs |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        md.append(f"| {r['method']} | {fmt(r['eval_ood'])} | {fmt(r['gain_ood'])} | {fmt(r['train_reward_last'])} | "
                  f"{fmt(r['r_l_last'], 3, 'g')} | {fmt(r['ref_r_l_last'], 3, 'g')} | {fmt(r['pairs_kept'], 2)} | "
                  f"{r['runs_done']}/{len(p.seeds)} |")
    data = {"claim": "table3", "profile": p.name, "budget": p.budget, "base_ood": base_ood, "rows": rows}
    _write(p, "table3", data, "\n".join(md) + "\n")
    return data


# ------------------------------------------------------------------------------------------------------ Table 1
def table1_variants() -> tuple:
    """(preset, overrides, row label): every preset as its paper sets it, and RDPO at the λ of this package's own
    rdpo preset (read from it: the study pins the paper's λ for the plain "rdpo" row)."""
    from rdpo_zoo.resolve import merge_settings

    ours = merge_settings("rdpo")["penalty_options"]["lambda"]
    return tuple((preset, {}, preset) for preset in PRESETS) + (
        ("rdpo", {"penalty_options": {"lambda": ours}}, f"rdpo, λ = {ours:g} (ours)"),)


def table1_specs(p: Profile):
    return _variant_specs(p, table1_variants())


def table1_report(p: Profile) -> dict:
    base = _base(p)
    rows = [{"method": "base (reference)", "runs_done": 1,
             **{r: mean_se(base["sets"]["ood"]["rewards"][r]["values"]) for r in MODEL["rewards"]}}]
    variants = table1_variants()
    for preset, o, label in variants:
        specs = [_spec(p, preset, seed=s, overrides=o) for s in p.seeds]
        row = {"method": label, "runs_done": sum(is_done(s) for s in specs)}
        for r in MODEL["rewards"]:
            row[r] = _seed_stat(specs, lambda s, r=r: mean_se(eval_values(s, "ood", r))["mean"])
            row[r + "_gain"] = _seed_stat(specs, lambda s, r=r: paired_gain(s, base, "ood", r)["mean"])
        row["train_reward_last"] = _seed_stat(specs, lambda s: run_summary(s)["reward_mean_last"])
        row["train_reward_first"] = _seed_stat(specs, lambda s: run_summary(s)["reward_mean_first"])
        row["seconds"] = _seed_stat(specs, lambda s: run_summary(s)["train_seconds"])
        row["pairs_kept"] = _seed_stat(specs, lambda s: run_summary(s)["pairs_kept_fraction"])
        for key in ("unet_calls", "optimiser_steps", "prompts_seen"):
            row[key] = _seed_stat(specs, lambda s, key=key: run_summary(s)[key])
        rows.append(row)
    names = [SHORT.get(r, r) for r in MODEL["rewards"]]
    md = [f"# Table 1: every preset, one budget, evaluated on held-out prompts with every reward ({p.name})", "",
          _budget_line(p, table1_specs(p)), "",
          f"Trained on {MODEL['train_reward']} (train prompts); evaluated on the OOD prompts ({p.eval_sets.get('ood')} "
          f"prompts × sampling seeds {list(p.eval_seeds)}, DDIM η = 1, T = 20, CFG 5, the same noise for every row); "
          f"mean ± s.e. over training seeds {list(p.seeds)} of each run's mean. Gains are paired with the base model's "
          "samples on the same noise. Equal UNet evaluations are not equal optimisation: the optimiser steps and "
          "prompts seen per run (mean over seeds) stand beside them.", "",
          "| method | " + " | ".join(names) + " | " + " | ".join(f"{n} gain" for n in names)
          + " | training reward first → last third | UNet evaluations | optimiser steps | prompts seen | pairs kept "
          "| training s | runs |",
          "| --- |" + " --- |" * (2 * len(names) + 7)]
    for r in rows:
        if r["method"].startswith("base"):
            md.append(f"| {r['method']} | " + " | ".join(fmt(r[x]) for x in MODEL["rewards"]) + " |" + " |" * len(names)
                      + " | | | | | | |")
            continue
        md.append(f"| {r['method']} | " + " | ".join(fmt(r[x]) for x in MODEL["rewards"]) + " | "
                  + " | ".join(fmt(r[x + "_gain"]) for x in MODEL["rewards"])
                  + f" | {fmt(r['train_reward_first'])} → {fmt(r['train_reward_last'])} | {fmt(r['unet_calls'], 0)} | "
                  f"{fmt(r['optimiser_steps'], 0)} | {fmt(r['prompts_seen'], 0)} | {fmt(r['pairs_kept'], 2)} | "
                  f"{fmt(r['seconds'], 0)} | {r['runs_done']}/{len(p.seeds)} |")
    data = {"claim": "table1", "profile": p.name, "budget": p.budget, "rows": rows}
    _write(p, "table1", data, "\n".join(md) + "\n")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    reward = MODEL["train_reward"]
    for i, (preset, o, label) in enumerate(variants):
        specs = [s for s in (_spec(p, preset, seed=x, overrides=o) for x in p.seeds) if is_done(s)]
        if not specs:
            continue
        color = f"C{i}"
        for k, s in enumerate(specs):
            ax.plot(*series(s, "reward_mean"), color=color, alpha=0.6, lw=1, label=f"{label} (training)" if k == 0 else None)
            xs, _ = series(s, "reward_mean")
            ev = mean_se(eval_values(s, "ood", reward))
            ax.errorbar([xs[-1] * (1 + 0.01 * i)], [ev["mean"]], yerr=[ev["se"]], fmt="o", color=color,
                        ms=5, label=f"{label} (OOD eval)" if k == 0 else None)
    b = mean_se(base["sets"]["ood"]["rewards"][reward]["values"])
    ax.axhline(b["mean"], color="black", ls="--", lw=1, label="base (OOD eval)")
    ax.set_xlabel("UNet evaluations")
    ax.set_ylabel(reward)
    ax.set_title(f"Table 1: training reward (lines) and OOD evaluation (points), {p.name} profile", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(_out_dir(p) / "table1.png", dpi=110)
    plt.close(fig)
    return data


# ------------------------------------------------------------------------------------------------------ Table 5
def table5_specs(p: Profile):
    return [_spec(p, preset, seed=seed) for preset in PRESETS for seed in p.seeds]  # Table 1's preset runs


def table5_report(p: Profile) -> dict:
    base = _base(p)
    reward = MODEL["train_reward"]
    rows = []
    for preset in PRESETS:
        specs = [_spec(p, preset, seed=s) for s in p.seeds]
        row = {"method": preset, "runs_done": sum(is_done(s) for s in specs)}
        for prompt_set in ("train", "ood"):
            row[prompt_set] = _seed_stat(specs, lambda s, ps=prompt_set: paired_gain(s, base, ps, reward)["mean"])
        rows.append(row)
    md = [f"# Table 5: in-distribution (train prompts) against out-of-distribution prompts ({p.name})", "",
          _budget_line(p, table5_specs(p)), "",
          f"The Table 1 runs (trained on {reward}); gain over the base model on the same noise, on {p.eval_sets.get('train')} "
          f"training prompts and on {p.eval_sets.get('ood')} OOD prompts (colour-shape pairs never trained on); mean ± "
          f"s.e. over training seeds {list(p.seeds)}.", "", "| method | gain, train prompts | gain, OOD prompts | runs |",
          "| --- | --- | --- | --- |"]
    for r in rows:
        md.append(f"| {r['method']} | {fmt(r['train'])} | {fmt(r['ood'])} | {r['runs_done']}/{len(p.seeds)} |")
    data = {"claim": "table5", "profile": p.name, "rows": rows}
    _write(p, "table5", data, "\n".join(md) + "\n")
    return data


# ------------------------------------------------------------------------------------------------------ Table 8
TABLE8_PRESETS = ("d3po", "tailorpo", "rdpo")


def _table8_pairs():
    for preset in TABLE8_PRESETS:
        for reward in MODEL["rewards"]:
            if preset == "rdpo" and reward == "compressibility":
                continue  # TailorPO-G's guidance needs a differentiable reward; JPEG size has none
            yield preset, reward


def table8_specs(p: Profile):
    return [_spec(p, preset, reward=reward, label=f"{preset} / {SHORT.get(reward, reward)}")
            for preset, reward in _table8_pairs()]


def table8_report(p: Profile) -> dict:
    base = _base(p)
    rows = []
    for preset, reward in _table8_pairs():
        spec = _spec(p, preset, reward=reward)
        row = {"method": preset, "trained_on": reward, "done": is_done(spec)}
        for r in MODEL["rewards"]:
            row[r] = paired_gain(spec, base, "ood", r) if row["done"] else None
        rows.append(row)
    names = [SHORT.get(r, r) for r in MODEL["rewards"]]
    md = [f"# Table 8: trained on one reward, evaluated on every reward ({p.name})", "", _budget_line(p, table8_specs(p)),
          "", f"Seed 0; gain over the base model on the OOD prompts, same noise (mean ± s.e. over {p.eval_sets.get('ood')} "
          f"prompts × seeds {list(p.eval_seeds)}). RDPO is not trained on compressibility: its TailorPO-G guidance "
          "needs a differentiable reward.", "",
          "| method | trained on | " + " | ".join(f"gain: {n}" for n in names) + " |", "| --- | --- |" + " --- |" * len(names)]
    for r in rows:
        md.append(f"| {r['method']} | {SHORT.get(r['trained_on'], r['trained_on'])} | "
                  + " | ".join(fmt(r[x]) if r[x] else "not run" for x in MODEL["rewards"]) + " |")
    data = {"claim": "table8", "profile": p.name, "rows": rows}
    _write(p, "table8", data, "\n".join(md) + "\n")
    return data


# ------------------------------------------------------------------------------------------------------ Table 4
BON_ESTIMATORS = (("final-order", "final-order", {}), ("x0-hat", "x0-hat", {}), ("delta-q", "delta-q", {}),
                  ("delta-q lookahead", "delta-q", {"variant": "lookahead"}))


def _bon_key(p: Profile, n: int, label: str) -> dict:
    from benchmarks.paper.runs import EVAL_SAMPLER, STUDY_VERSION, _weights_id

    return {"version": STUDY_VERSION, "weights": _weights_id(MODEL["name"]), "model": MODEL["name"],
            "reward": MODEL["train_reward"], "n": n, "estimator": label, "prompts": p.bon_prompts,
            "seeds": list(p.bon_seeds), "steps": list(PAPER_STEPS), "sampler": EVAL_SAMPLER}


def _bon_path(key: dict) -> Path:
    import hashlib

    return RUNS / f"bon-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.json"


def table4_compute(p: Profile, log=print) -> None:
    """Best-of-N on the base model (no training): one cached file per (N, estimator)."""
    todo = [(n, e) for n in p.bon_n for e in BON_ESTIMATORS if not _bon_path(_bon_key(p, n, e[0])).is_file()]
    if not todo:
        return
    import time

    import torch

    from benchmarks.paper.runs import _eval_prompts, _register_test_parts_if_needed, eval_model
    from rdpo_zoo.best_of_n import best_of_n
    from rdpo_zoo.registry import get_registry

    _register_test_parts_if_needed(MODEL["name"])
    registry = get_registry()
    model = eval_model(registry.get("model", MODEL["name"]).build({}))
    reward = registry.get("reward", MODEL["train_reward"]).build({})
    prompts = _eval_prompts("ood", p.bon_prompts)
    steps = [s for s in PAPER_STEPS if s <= model.num_steps]
    for n, (label, name, options) in todo:
        key = _bon_key(p, n, label)
        estimator = registry.get("estimator", name).build(options)
        t0 = time.time()
        with torch.no_grad():
            result = best_of_n(model, prompts, reward, {label: estimator}, n, seeds=p.bon_seeds, steps=steps,
                               batch_size=max(1, 64 // n))
        result["seconds"] = time.time() - t0
        result["key"] = key
        _bon_path(key).write_text(json.dumps(result, indent=1))
        log(f"  best-of-{n} {label}: {result['methods'][label]['mean']:.4f} ({result['seconds']:.0f} s)")


def table4_report(p: Profile) -> dict:
    rows, plain = [], None
    for n in p.bon_n:
        for label, _, _ in BON_ESTIMATORS:
            path = _bon_path(_bon_key(p, n, label))
            if not path.is_file():
                rows.append({"n": n, "estimator": label, "done": False})
                continue
            result = json.loads(path.read_text())
            plain = plain or result["methods"]["plain"]
            rows.append({"n": n, "estimator": label, "done": True, **result["methods"][label],
                         "seconds": result.get("seconds")})
    md = [f"# Table 4: step-wise best-of-N on the base model ({p.name})", "",
          f"Reward {MODEL['train_reward']}; {p.bon_prompts} OOD prompts × seeds {list(p.bon_seeds)}; choices at the "
          f"paper's steps t = {', '.join(map(str, PAPER_STEPS))} of T = 20 (DDIM η = 1, CFG 5); at each, N candidates "
          "from x_t, keep the best by the estimator. 'delta-q' (Eq. 6, after − before) shares x_t between the "
          "candidates, so its ranking equals x0-hat's (Eq. 5) exactly; 'delta-q lookahead' ranks by Q(x_{t-2}) − "
          "Q(x_{t-1}) with a one-step look-ahead. The cost column is UNet sample-evaluations per image "
          "(a CFG pair counts 2).", "",
          f"Plain sampling: {fmt(plain) if plain else 'not run'}.", "",
          "| N | estimator | final reward | gain over plain (paired) | UNet evaluations / image | seconds |",
          "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if not r["done"]:
            md.append(f"| {r['n']} | {r['estimator']} | not run | | | |")
            continue
        md.append(f"| {r['n']} | {r['estimator']} | {fmt(r)} | {fmt(r['gain'])} | {r['unet_calls_per_sample']:.0f} | "
                  f"{r['seconds']:.0f} |")
    data = {"claim": "table4", "profile": p.name, "plain": plain, "rows": rows}
    _write(p, "table4", data, "\n".join(md) + "\n")
    return data


# ------------------------------------------------------------------------------------------------------ Table 6
def table6_specs(p: Profile):
    return [_spec(p, "rdpo", label="rdpo, DDIM η = 1"),
            _spec(p, "rdpo", overrides={"scheduler": "ddpm", "eta": None}, label="rdpo, DDPM fixed_small")]


def table6_identity() -> dict:
    """The Gaussian step (a, b, σ) of DDIM η = 1 and of DDPM on the model's scheduler at T = 20, step by step."""
    from benchmarks.paper.runs import _register_test_parts_if_needed
    from rdpo_zoo.diffusion import DiffusionModel
    from rdpo_zoo.registry import get_registry

    _register_test_parts_if_needed(MODEL["name"])
    pipe = get_registry().get("model", MODEL["name"]).build({})
    ddim = DiffusionModel(pipe, sampler="ddim", eta=1.0, num_steps=20, guidance_scale=5.0)
    ddpm = DiffusionModel(pipe, sampler="ddpm", eta=None, num_steps=20, guidance_scale=5.0)
    rows = []
    for i in range(20):
        a1, b1, s1 = (float(v) for v in ddim.coefficients(i))
        a2, b2, s2 = (float(v) for v in ddpm.coefficients(i))
        rows.append({"step_t": 20 - i, "timestep": int(ddim.timesteps[i]), "ddpm_timestep": int(ddpm.timesteps[i]),
                     "ddim": [a1, b1, s1], "ddpm": [a2, b2, s2],
                     "max_abs_diff": max(abs(a1 - a2), abs(b1 - b2), abs(s1 - s2))})
    return {"variance_type": getattr(ddpm.scheduler.config, "variance_type", None), "rows": rows}


def table6_report(p: Profile) -> dict:
    try:
        identity = table6_identity()
    except Exception as error:  # noqa: BLE001 - reported, not hidden
        identity = {"error": f"{type(error).__name__}: {error}", "rows": []}
    specs = table6_specs(p)
    runs = []
    for spec in specs:
        s = run_summary(spec)
        s["label"] = spec.label
        runs.append(s)
    diffs = {}
    if all(is_done(s) for s in specs):
        a, b = (load_metrics(s) for s in specs)
        for key in ("reward_mean", "r_w", "r_l", "loss"):
            va = [m.get(key) for m in a if m["iteration"] >= 1]
            vb = [m.get(key) for m in b if m["iteration"] >= 1]
            diffs[key] = max((abs(x - y) for x, y in zip(va, vb) if x is not None and y is not None), default=None)
        ea, eb = (eval_values(s, "ood", MODEL["train_reward"]) for s in specs)
        diffs["ood_eval_max_abs"] = max(abs(x - y) for x, y in zip(ea, eb))
    md = [f"# Table 6: DDPM instead of DDIM ({p.name})", "",
          "DDIM with η = 1 and DDPM with `fixed_small` variance take the same Gaussian step on the same timesteps: "
          "μ = a·x_t + b·ε̂, σ² = (1 − ᾱ_prev)/(1 − ᾱ_t)·(1 − ᾱ_t/ᾱ_prev) in both. The table lists the largest "
          "difference of (a, b, σ) per step on the embedded model's scheduler at T = 20.", ""]
    if identity.get("error"):
        md.append(f"Could not build both samplers: {identity['error']}")
    else:
        worst = max(identity["rows"], key=lambda r: r["max_abs_diff"])
        md += [f"DDPM variance type: {identity['variance_type']}. Largest |Δ(a, b, σ)| over the 20 steps: "
               f"{worst['max_abs_diff']:.3g} (at step t = {worst['step_t']}).", "",
               "| step t | timestep (DDIM / DDPM) | DDIM (a, b, σ) | DDPM (a, b, σ) | max abs diff |",
               "| --- | --- | --- | --- | --- |"]
        for r in identity["rows"]:
            md.append(f"| {r['step_t']} | {r['timestep']} / {r['ddpm_timestep']} | "
                      + ", ".join(f"{v:.5f}" for v in r["ddim"]) + " | " + ", ".join(f"{v:.5f}" for v in r["ddpm"])
                      + f" | {r['max_abs_diff']:.2g} |")
    md += ["", _budget_line(p, specs), "", "| run | training reward first → last third | r_l last | OOD gain |",
           "| --- | --- | --- | --- |"]
    base = _base(p)
    for spec, s in zip(specs, runs):
        if not s["done"]:
            md.append(f"| {s['label']} | not run | | |")
            continue
        md.append(f"| {s['label']} | {s['reward_mean_first']:.4f} → {s['reward_mean_last']:.4f} | {s['r_l_last']:.3g} | "
                  f"{fmt(paired_gain(spec, base, 'ood', spec.reward))} |")
    if diffs:
        md += ["", "Largest per-iteration difference between the two runs (same seed): "
               + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items() if v is not None) + "."]
    data = {"claim": "table6", "profile": p.name, "identity": identity, "runs": runs, "run_differences": diffs}
    _write(p, "table6", data, "\n".join(md) + "\n")
    return data


# ------------------------------------------------------------------------------------------------------ registry
CLAIMS = {
    # name: (specs, report, extra compute) in the study's order of priority
    "lr-pilot": (lr_pilot_specs, lr_pilot_report, None),
    "fig1": (fig1_specs, fig1_report, None),
    "fig3": (fig3_specs, fig3_report, None),
    "table3": (table3_specs, table3_report, None),
    "table1": (table1_specs, table1_report, None),
    "table4": (lambda p: [], table4_report, table4_compute),
    "table5": (table5_specs, table5_report, None),
    "table6": (table6_specs, table6_report, None),
    "table8": (table8_specs, table8_report, None),
    "spo-threshold-0": (spo0_specs, table3_report, None),
}
ORDER = ("long-horizon", "fig1", "fig3", "table3", "table1", "table4", "table5", "table6", "table8", "spo-threshold-0")

from benchmarks.paper import long_horizon  # noqa: E402 - it builds on the helpers above

CLAIMS["long-horizon"] = (long_horizon.specs, long_horizon.report, None)


def profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"profile: expected one of {sorted(PROFILES)}, got {name!r}")
    return PROFILES[name]
