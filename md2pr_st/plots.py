"""Plots of a run, as PNG files: loss parts per step, dev nDCG@10 and the false-negative margin per round, and the
histogram of a round's teacher gaps with the flagged candidates."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from md2pr_st.utils import atomic_path


def _pyplot():
    # matplotlib is loaded when a plot is drawn, not when the stages that draw one are imported; Agg before pyplot.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    _pyplot().close(fig)
    return path


def plot_run(run_dir: Path, rounds: list[dict], history: list[dict], before_dev: dict | None = None) -> list[Path]:
    """PNG plots: ``loss_parts.png`` (each weighted loss part per logged step, all rounds, a dotted line where a round
    starts) and ``rounds.png`` (dev nDCG@10 per round, round 0 being the student before training from
    ``before_dev``; the false-negative margin and threshold of each round). Integer axes where counts are counted."""
    from matplotlib.ticker import MaxNLocator  # matplotlib: when a plot is drawn (see _pyplot)

    plt = _pyplot()
    paths = []
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    points: dict[str, list] = {}
    starts: list[tuple[int, int]] = []  # (first logged step of a round, round)
    step = 0
    for entry in history:
        if "loss" not in entry:
            continue
        step += 1
        if "round" in entry and (not starts or starts[-1][1] != entry["round"]):
            starts.append((step, entry["round"]))
        for key in ("loss", "contrastive", "sentence_level", "word_level"):
            if key in entry:
                points.setdefault(key, []).append((step, entry[key]))
    for key, values in points.items():
        ax.plot(*zip(*values), label=key, marker="." if len(values) < 30 else None)
    for first, r in starts[1:]:
        ax.axvline(first - 0.5, color="gray", linestyle=":", linewidth=1)
        ax.text(first - 0.4, ax.get_ylim()[1], f"round {r}", fontsize=7, va="top", color="gray")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("logged training step (all rounds)")
    ax.set_ylabel("loss (weighted parts)")
    ax.set_title("MD2PR loss parts")
    if points:
        ax.legend()
    fig.tight_layout()
    paths.append(_save(fig, run_dir / "loss_parts.png"))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    rs = [info["round"] for info in rounds]
    dev_rounds, dev_values = rs, [info["dev"]["ndcg@10"] for info in rounds]
    if before_dev is not None:
        dev_rounds, dev_values = [0, *rs], [before_dev["ndcg@10"], *dev_values]
        ax1.axhline(before_dev["ndcg@10"], color="gray", linestyle=":", label="before training")
        ax1.legend()
    ax1.plot(dev_rounds, dev_values, marker="o")
    ax1.set_xlabel("round (0: before training)")
    ax1.set_ylabel("dev nDCG@10")
    ax1.set_xticks(dev_rounds)
    for key, color in (("margin", "tab:red"), ("threshold", "tab:purple")):
        values = [(r, info["filter"].get(key)) for r, info in zip(rs, rounds) if info["filter"].get(key) is not None]
        if values:
            ax2.plot(*zip(*values), marker="o", color=color, label=f"false-negative {key}")
    ax2.set_xlabel("round")
    ax2.set_ylabel("teacher score units")
    ax2.set_xticks(rs)
    if ax2.lines:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, run_dir / "rounds.png"))
    return paths


def plot_filter_gaps(
    gaps: np.ndarray,
    flags: np.ndarray,
    path: str | Path,
    margin: float | None = None,
    title: str = "",
    bins: int = 60,
) -> Path:
    """A PNG histogram of a round's teacher score gaps ``t(q, d+) - t(q, d)``, flagged candidates in red and the
    margin m_r (when the rule has one) as a vertical line."""
    plt = _pyplot()
    gaps, flags = np.asarray(gaps, dtype=np.float64).reshape(-1), np.asarray(flags, dtype=bool).reshape(-1)
    fig, ax = plt.subplots(figsize=(7, 4))
    edges = np.histogram_bin_edges(gaps, bins=bins)
    ax.hist([gaps[~flags], gaps[flags]], bins=edges, stacked=True, color=["#4c72b0", "#c44e52"],
            label=[f"kept ({int((~flags).sum())})", f"flagged ({int(flags.sum())})"])  # fmt: skip
    if margin is not None and math.isfinite(margin):
        ax.axvline(margin, color="black", linestyle="--", label=f"m_r = {margin:.3f}")
    ax.set_xlabel("teacher gap t(q, d+) - t(q, d)  (teacher score units)")
    ax.set_ylabel("candidates")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path, dpi=120)
