"""Plot ``rdpo-zoo bench`` results: time and GB/s against P·D, one panel per (mode, dtype, layout).

    python benchmarks/kernels_plot.py benchmarks/results/<device>.json [-o benchmarks/results/<device>.png]

Reads the one row schema the bench writes (op, provider, mode, metric, unit, x, median, p20, p80); draws medians
with p20–p80 bands, the measured copy bandwidth as the ceiling of the GB/s panels. Needs matplotlib (the ``plot``
extra).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def load(path: Path) -> dict:
    result = json.loads(path.read_text())
    try:
        from rdpo_zoo.kernels.bench import validate_result

        validate_result(result)
    except ImportError:  # plotting a result without the package installed
        pass
    return result


def series(result: dict, metric: str):
    """{(mode, dtype, layout): {provider: [(P·D, median, p20, p80), ...]}} for one metric."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for row in result["rows"]:
        if row["metric"] != metric:
            continue
        x = row["x"]
        out[(row["mode"], x["dtype"], x["layout"])][row["provider"]].append(
            (x["P"] * x["D"], row["median"], row["p20"], row["p80"]))
    for panel in out.values():
        for points in panel.values():
            points.sort()
    return out


def plot(result: dict, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = series(result, "time")
    gbps = series(result, "throughput_min_bytes")
    copy = series(result, "bandwidth_min_bytes")
    panels = sorted(times)
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7), squeeze=False)
    for col, key in enumerate(panels):
        for provider, points in sorted(times[key].items()):
            xs, med, lo, hi = zip(*points)
            axes[0][col].plot(xs, med, marker="o", label=provider)
            axes[0][col].fill_between(xs, lo, hi, alpha=0.2)
        for provider, points in sorted(gbps.get(key, {}).items()):
            xs, med, lo, hi = zip(*points)
            axes[1][col].plot(xs, med, marker="o", label=provider)
        for points in copy.get(key, {}).values():
            xs, med, _, _ = zip(*points)
            axes[1][col].plot(xs, med, color="black", linestyle="--", label="copy")
        axes[0][col].set_title(" ".join(key))
        for row, label in ((0, "time (ms)"), (1, "GB/s (one-pass bytes)")):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("P·D")
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
    fig.suptitle(f"{result['op']} on {result['device']} (torch {result['versions']['torch']}, "
                 f"triton {result['versions']['triton']})")
    fig.tight_layout()
    fig.savefig(output, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args(argv)
    plot(load(args.result), args.output or args.result.with_suffix(".png"))


if __name__ == "__main__":
    main()
