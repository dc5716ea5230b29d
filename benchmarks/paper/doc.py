"""Verdicts from the claims' JSON: one line per claim saying, from the numbers, whether it held.

``python -m benchmarks.paper verdicts --profile full`` prints them (and writes ``verdicts.md`` beside the tables);
``docs/reproduction.md`` quotes them with the reading that numbers alone cannot give.
"""

from __future__ import annotations

import json
import math

from benchmarks.paper.claims import _out_dir


def _load(p, claim):
    path = _out_dir(p) / f"{claim}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _diff(a: dict, b: dict):
    """a − b with the s.e. of a difference of independent means."""
    if not a or not b or not a.get("n") or not b.get("n"):
        return None
    se = math.sqrt(a["se"] ** 2 + b["se"] ** 2)  # nan with one seed: no verdict then
    return a["mean"] - b["mean"], se


def verdicts(p) -> list[str]:
    out = []
    d = _load(p, "long-horizon")
    if d and d.get("tiers"):
        from benchmarks.paper.stats import format_difference

        tiers = ", ".join(f"tier {t['tier']} {t['status']} ({t['done']}/{t['runs']})" for t in d["tiers"])
        setting = (f"lr {d['setting']['lr']:g}, guidance step {d['setting']['guidance_step']:g} "
                   f"({d['setting_reason']})")
        tested = [v for v in d["verdicts"] if v["difference"]["n"]]
        out.append(f"Long horizon ({d['iterations']} iterations; {tiers}; setting {setting}; best λ/β on validation: "
                   f"{d.get('best_ratio') or 'not chosen yet'}): " + ("; ".join(
                       f"{v['claim']}, {v['question']}: {format_difference(v['difference'])}, {v['verdict']}"
                       for v in tested) or "no comparison run yet") + ".")
    d = _load(p, "fig1")
    if d:
        done = [r for r in d["rows"] if r["done"]]
        if done:
            raw = [r["reward"] for r in done if r["raw_rises"]]
            rel = [r["reward"] for r in done if r["relative_rises"]]
            ref = [r["reward"] for r in done if r["ref_rises_above_zero"]]
            out.append(
                f"Fig. 1 ({len(done)}/{len(d['rows'])} rewards run): r_l on the training pairs rose and ended above 0 "
                f"for {len(raw)}/{len(done)} ({', '.join(raw) or 'none'}); r_l relative to the pair mean rose for "
                f"{len(rel)}/{len(done)} ({', '.join(rel) or 'none'}); on the fixed reference pairs r_l ended above 0 "
                f"and rising for {len(ref)}/{len(done)} ({', '.join(ref) or 'none'}). Values (training r_l and pair "
                "mean, mean of the last third of the iterations; reference r_l and pair mean, at the end): " + "; ".join(
                    f"{r['reward']}: {r['r_l_last']:.3g}, {r['pair_mean_last']:.3g}; {r['ref_r_l_final']:.3g}, "
                    f"{r['ref_pair_mean_final']:.3g}" for r in done) + ".")
    d = _load(p, "fig3")
    if d:
        rows = {r["label"]: r for r in d["rows"] if r["done"]}
        parts = []
        for with_psi, without in (("rdpo λ=100", "rdpo-star (no Ψ)"), ("d3po + Ψ (λ=100)", "d3po")):
            if with_psi in rows and without in rows:
                a, b = rows[with_psi], rows[without]
                parts.append(f"{without} → {with_psi}: training r_l {b['r_l_last']:.3g} → {a['r_l_last']:.3g}, reference "
                             f"r_l {b['ref_r_l_last']:.3g} → {a['ref_r_l_last']:.3g}, Ψ active {b['psi_active_last']:.2f} → "
                             f"{a['psi_active_last']:.2f}")
        lam = [(label, r) for label, r in rows.items() if label.startswith("rdpo λ")]
        if lam:
            parts.append("λ sweep (training reward last third, drop from peak, OOD gain): " + "; ".join(
                f"{label}: {r['reward_mean_last']:.4f}, {r['reward_drop_from_peak']:.4f}, "
                f"{r['eval_gain_ood']['mean']:+.4f} ± {r['eval_gain_ood']['se']:.4f}" for label, r in lam))
        if parts:
            out.append("Fig. 3: " + ". ".join(parts) + ".")
    d = _load(p, "table3")
    if d:
        rows = {r["method"]: r for r in d["rows"]}
        parts = []
        for preset in ("d3po", "spo", "tailorpo", "spo, threshold 0"):
            a, b = rows.get(f"{preset} + Ψ"), rows.get(preset)
            if a and b and a["gain_ood"].get("n") and b["gain_ood"].get("n"):
                diff = _diff(a["gain_ood"], b["gain_ood"])
                if diff[1] != diff[1]:
                    verdict = "one seed, no s.e."
                else:
                    verdict = "gain" if diff[0] > 2 * diff[1] else ("loss" if diff[0] < -2 * diff[1] else
                                                                    "no clear change (within 2 s.e.)")
                parts.append(f"{preset}: Ψ changes the OOD gain by {diff[0]:+.4f} ± {diff[1]:.4f} ({verdict}; "
                             f"{a['gain_ood']['n']} vs {b['gain_ood']['n']} seeds)")
        if parts:
            out.append("Table 3: " + "; ".join(parts) + ".")
    d = _load(p, "table1")
    if d:
        rows = [r for r in d["rows"] if not r["method"].startswith("base") and r["runs_done"]]
        key = "world-aesthetic_gain" if rows and "world-aesthetic_gain" in rows[0] else None
        if rows and key:
            ranked = sorted(rows, key=lambda r: -r[key]["mean"])
            out.append("Table 1 (OOD aesthetic gain, best first): " + ", ".join(
                f"{r['method']} {r[key]['mean']:+.4f} ± {r[key]['se']:.4f} ({r['runs_done']} seeds)" for r in ranked)
                + ".")
    d = _load(p, "table4")
    if d and d.get("plain"):
        out.append(f"Table 4 (plain {d['plain']['mean']:.4f}): " + "; ".join(
            f"N={r['n']} {r['estimator']} {r['mean']:.4f} (gain {r['gain']['mean']:+.4f} ± {r['gain']['se']:.4f}, "
            f"{r['unet_calls_per_sample']:.0f} UNet evals/image)" for r in d["rows"] if r["done"]) + ".")
    d = _load(p, "table5")
    if d:
        rows = [r for r in d["rows"] if r["runs_done"]]
        if rows:
            out.append("Table 5 (gain on train prompts / on OOD prompts): " + "; ".join(
                f"{r['method']} {r['train']['mean']:+.4f} / {r['ood']['mean']:+.4f}" for r in rows) + ".")
    d = _load(p, "table6")
    if d and d["identity"].get("rows"):
        same = [r["step_t"] for r in d["identity"]["rows"] if r["max_abs_diff"] < 1e-6]
        differ = [r["step_t"] for r in d["identity"]["rows"] if r["max_abs_diff"] >= 1e-6]
        out.append(f"Table 6: DDIM η = 1 and DDPM fixed_small give the same (a, b, σ) at {len(same)}/20 steps; they "
                   f"differ at step(s) t = {differ or 'none'}. Run differences: {d.get('run_differences') or 'not run'}.")
    d = _load(p, "table8")
    if d:
        rows = [r for r in d["rows"] if r["done"]]
        if rows:
            out.append("Table 8 (OOD gain on aesthetic / compressibility / fidelity): " + "; ".join(
                f"{r['method']} trained on {r['trained_on']}: " + " / ".join(
                    f"{r[x]['mean']:+.4g}" for x in ("world-aesthetic", "compressibility", "world-fidelity") if r.get(x))
                for r in rows) + ".")
    (_out_dir(p) / "verdicts.md").write_text("\n\n".join(f"- {line}" for line in out) + "\n")
    return out
