"""The run plots: files written, round boundaries marked, integer step axis."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from md2pr_st.plots import plot_run  # noqa: E402


def test_loss_parts_mark_where_each_round_starts(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    history = [
        {"loss": 3.0 - 0.1 * i, "contrastive": 2.0, "sentence_level": 0.5, "round": 1 + i // 4} for i in range(8)
    ]
    rounds = [
        {"round": r, "dev": {"ndcg@10": 0.5 + r / 100}, "filter": {"margin": 0.0, "threshold": 2.0 - r / 10}}
        for r in (1, 2)
    ]
    figures = []
    original = plt.subplots
    monkeypatch.setattr(plt, "subplots", lambda *a, **k: figures.append(original(*a, **k)) or figures[-1])
    paths = plot_run(tmp_path, rounds, history, {"ndcg@10": 0.45})
    assert [p.name for p in paths] == ["loss_parts.png", "rounds.png"] and all(p.stat().st_size > 1000 for p in paths)
    loss_ax = figures[0][1]
    boundaries = [line.get_xdata()[0] for line in loss_ax.lines if line.get_linestyle() == ":"]
    assert boundaries == [4.5]  # round 2 starts at logged step 5
    assert all(float(t).is_integer() for t in loss_ax.get_xticks())
    _, (dev_ax, filter_ax) = figures[1]
    assert list(dev_ax.get_xticks()) == [0, 1, 2]
    assert {line.get_label() for line in filter_ax.lines} == {"false-negative margin", "false-negative threshold"}
