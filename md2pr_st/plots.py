"""Plots of a run, as PNG files: loss parts per step, dev nDCG@10 and the false-negative margin per round, and the
histogram of a round's teacher gaps with the flagged candidates."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from md2pr_st.utils import atomic_path


def _pyplot():
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
    """PNG plots: loss parts per step, dev nDCG@10 per round (round 0: the student before training, from
    ``before_dev``), false-negative margin per round."""
    plt = _pyplot()
    paths = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    step = 0
    xs: dict[str, list] = {}
    for entry in history:
        if "loss" not in entry:
            continue
        step += 1
        for key in ("loss", "contrastive", "sentence_level", "word_level"):
            if key in entry:
                xs.setdefault(key, []).append((step, entry[key]))
    for key, points in xs.items():
        ax.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
    ax.set_xlabel("logging step (all rounds)")
    ax.set_ylabel("loss")
    ax.set_title("MD2PR loss parts")
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
    ax2.plot(rs, [info["filter"].get("margin") or 0.0 for info in rounds], marker="o", color="tab:red")
    ax2.set_xlabel("round")
    ax2.set_ylabel("false-negative margin m_r")
    ax2.set_xticks(rs)
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
