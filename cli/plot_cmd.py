"""``rdpo-zoo plot``: reward and log-ratio curves of one or more training runs, from their metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import click

#: (metric, title) panels; r_l is the quantity the RDPO paper is about (its Fig. 1 and 3b).
PANELS = (("reward_mean", "reward (rollout mean)"), ("r_l", "r_l: dispreferred log-ratio"),
          ("r_w", "r_w: preferred log-ratio"), ("loss", "loss"))


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise click.BadParameter(f"{run_dir} has no metrics.jsonl", param_hint="RUN_DIR")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=Path("curves.png"),
              show_default=True, help="The PNG to write.")
def plot(run_dirs, out_path) -> None:
    """Draw reward, r_l, r_w and loss against iteration for RUN_DIRS into one PNG (needs matplotlib:
    pip install 'rdpo-zoo[plot]')."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise click.ClickException("plotting needs matplotlib: pip install 'rdpo-zoo[plot]'") from None
    runs = {str(d): read_metrics(d) for d in run_dirs}
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for ax, (key, title) in zip(axes, PANELS):
        for label, records in runs.items():
            points = [(r["iteration"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=Path(label).name)
        if key in ("r_l", "r_w"):
            ax.axhline(0.0, color="gray", linewidth=0.8, linestyle="--")
        ax.set_title(title)
        ax.set_xlabel("iteration")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    click.echo(f"wrote {out_path}")
