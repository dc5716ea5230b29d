"""The final evaluation of a training run: base (adapter off) against tuned (adapter on) on held-out prompts, with
``eval.json`` and ``eval.png`` written into the run's folder."""

from __future__ import annotations

import json
import logging
from typing import Optional

import torch

from rdpo_zoo.run_folder import atomic_write_text

logger = logging.getLogger("rdpo_zoo.trainer")  # the run's log, where the trainer's own lines go

__all__ = ["EVAL_GRID_IMAGES", "evaluate_run"]

#: base-vs-tuned image pairs drawn into eval.png at the end of a run
EVAL_GRID_IMAGES = 16


@torch.no_grad()
def evaluate_run(trainer, n: Optional[int] = None) -> dict:
    """Base against tuned on ``n`` held-out prompt/seed pairs (the eval prompts cycled), the same initial noise and
    sampling noise for both: every world reward and the trained one, the pixel checker, spread and the tuned model's
    KL to the base (``rdpo_zoo.evaluate.compare_models``), paired, with standard errors. Writes ``eval.json`` and
    ``eval.png`` (base row above tuned, checker marks) into the trainer's output folder."""
    from rdpo_zoo.evaluate import checker_hits, compare_models, report_rewards, save_comparison_grid
    from rdpo_zoo.world import prompt_set

    run, model, accelerator = trainer.run, trainer.model, trainer.accelerator
    n = n or run.eval_samples
    prompts_all = prompt_set(run.eval_prompts)
    prompts = [prompts_all[i % len(prompts_all)] for i in range(n)]
    model.denoiser.eval()
    rewards, trained, notes = report_rewards(trainer.registry, run.reward, trainer.reward, prompts)
    samples = {}
    main = accelerator.is_main_process
    show = not run.quiet and main
    if show:
        logger.info("final evaluation: base and tuned on %d held-out prompt/seed pairs (%s prompts)", n,
                    run.eval_prompts)
    with accelerator.autocast():
        report = compare_models(model, prompts, [run.seed], rewards, trained, run.eval_batch_size, notes=notes,
                                keep=samples, show_progress=show)
    report.update(reward=run.reward, prompt_set=run.eval_prompts)
    if main:
        atomic_write_text(trainer.output_dir / "eval.json", json.dumps(report, indent=2))
        # look before trusting a gain: a reward can be hacked (base above, tuned below, same noise per column)
        shown = min(n, EVAL_GRID_IMAGES)
        rows = [samples["base"].images[:shown], samples["tuned"].images[:shown]]
        marks = None
        if "checker" in report:
            marks = [checker_hits(r, prompts[:shown])["all"].bool().tolist() for r in rows]
        save_comparison_grid(rows, trainer.output_dir / "eval.png", row_labels=["base", "tuned"],
                             column_labels=[_short_prompt(p) for p in prompts[:shown]], marks=marks)
    return report


def _short_prompt(prompt: str) -> str:
    """A world prompt without its articles and 'background' (a grid column is ~20 characters wide)."""
    words = [w for w in prompt.split() if w.lower() not in ("a", "an", "background")]
    return " ".join(words)
