"""The report of ``benchmarks/quality.py``: pooled means, per-fold means, paired bootstrap CIs, a chart.

    HF_HUB_OFFLINE=1 python benchmarks/quality.py --output runs/quality --report

Writes ``report.md``, ``summary.json`` and ``quality.png`` into the output folder and prints the report.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

METRICS = ("ndcg@10", "condensed_ndcg@10", "judged@10", "mrr@10", "recall@100")
HOST = ("mnrl", "margin_mse", "distill_kl", "gist")


def load_results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/fold*/*/result.json"))]


def pooled(results: list[dict], qrels: str, metric: str, seed: int | None = None) -> dict[tuple, dict[str, float]]:
    """(regime, recipe) -> {topic: value} over every fold (each topic is a test topic once); the first seed unless
    ``seed`` is given."""
    out: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in results:
        if qrels not in r or (seed is not None and r["seed"] != seed) or metric not in r[qrels]["per_query"]:
            continue  # a metric added after the run was made (condensed_ndcg@10) is shown as missing
        out[(r["regime"], r["recipe"], r["seed"])].update(r[qrels]["per_query"][metric])
    return out


def report(out: Path) -> dict:
    from md2pr_st.evaluation import paired_bootstrap

    results = load_results(out)
    if not results:
        raise SystemExit(f"No finished runs under {out}.")
    seed0 = min(r["seed"] for r in results)
    summary: dict = {"regimes": {}}
    lines = [f"# MD2PR quality, {len({(r['regime'], r['fold']) for r in results})} (regime, fold) pairs\n"]
    for regime in sorted({r["regime"] for r in results}):
        part = [r for r in results if r["regime"] == regime]
        folds = sorted({r["fold"] for r in part})
        recipes = [name for name in _order(part)]
        regime_summary: dict = {}
        for qrels in ("umbrela", "nist"):
            per_topic = {m: pooled(part, qrels, m, seed0) for m in METRICS}
            host_means = {
                rec: statistics.mean(per_topic["ndcg@10"][(regime, rec, seed0)].values())
                for rec in HOST
                if (regime, rec, seed0) in per_topic["ndcg@10"]
            }
            best_host = max(host_means, key=host_means.get) if host_means else None
            rows = []
            for rec in recipes:
                key = (regime, rec, seed0)
                if key not in per_topic["ndcg@10"]:
                    continue
                row = {"recipe": rec, "topics": len(per_topic["ndcg@10"][key])}
                for m in METRICS:
                    values = per_topic[m].get(key)
                    row[m] = statistics.mean(values.values()) if values else None
                row["folds"] = {
                    f: next(
                        (
                            r[qrels]["ndcg@10"]
                            for r in part
                            if r["recipe"] == rec and r["fold"] == f and r["seed"] == seed0 and qrels in r
                        ),
                        None,
                    )  # fmt: skip
                    for f in folds
                }
                if best_host and rec != best_host:
                    row["vs_best_host"] = paired_bootstrap(
                        per_topic["ndcg@10"][key], per_topic["ndcg@10"][(regime, best_host, seed0)]
                    )
                if rec != "base" and (regime, "base", seed0) in per_topic["ndcg@10"]:
                    row["vs_base"] = paired_bootstrap(
                        per_topic["ndcg@10"][key], per_topic["ndcg@10"][(regime, "base", seed0)]
                    )
                row["seeds"] = _seed_spread(part, rec, qrels, folds)
                row["seconds"] = statistics.median(
                    [r["seconds"] for r in part if r["recipe"] == rec and r["seed"] == seed0]
                )
                rows.append(row)
            regime_summary[qrels] = {"best_host": best_host, "rows": rows}
            lines += _table(regime, qrels, folds, best_host, rows)
        regime_summary["teacher_gaps"] = teacher_gaps(out, regime)
        lines += _gap_lines(regime, regime_summary["teacher_gaps"])
        regime_summary["ablations"] = ablation_table(part)
        lines += _ablation_lines(regime, regime_summary["ablations"])
        regime_summary["dev"] = dev_table(part, seed0)
        lines += _dev_lines(regime, regime_summary["dev"])
        summary["regimes"][regime] = regime_summary
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    chart(summary, out / "quality.png")
    text = "\n".join(lines) + "\n![quality](quality.png)\n"
    (out / "report.md").write_text(text)
    print(text)
    return summary


DEFAULT = "md2pr"  # the library's defaults

# (question, recipe with it, recipe without it): each pair differs in one setting
ABLATIONS = (
    ("MD2PR's defaults vs the host's MNRL", DEFAULT, "mnrl"),
    ("the best MD2PR recipe vs the best host recipe (each chosen on dev)", "md2pr_best", "host_best"),
    # the larger model a user could deploy instead of distilling (all-mpnet-base-v2 as it is, 384 tokens)
    ("the off-the-shelf student vs all-mpnet-base-v2 as it is", "base", "mpnet_as_is"),
    ("the best MD2PR recipe vs all-mpnet-base-v2 as it is", "md2pr_best", "mpnet_as_is"),
    ("the sentence level L_s", DEFAULT, "md2pr_no_sentence"),
    ("MD2PR's L_c alone (flagged candidates masked) vs the host's MNRL", "md2pr_no_sentence", "mnrl"),
    ("masking the flagged candidates out of L_c", DEFAULT, "md2pr_no_filter"),
    ("masking, with the word level on (beta 1)", "md2pr_word_1_online", "md2pr_word_1_no_filter"),
    ("the word level, beta 1 (teacher online)", "md2pr_word_1_online", DEFAULT),
    ("the word level, beta 0.1 (teacher online)", "md2pr_word_0.1_online", DEFAULT),
    ("the word level, beta 1", "md2pr_word_1", DEFAULT),
    ("the word level, beta 0.3", "md2pr_word_0.3", DEFAULT),
    ("the word level, beta 0.1", "md2pr_word_0.1", DEFAULT),
    ("the word level, beta 0.03", "md2pr_word_0.03", DEFAULT),
    ("the word level from the teacher's middle layer", "md2pr_word_middle", DEFAULT),
    ("the word level from the mean of the teacher's last 4 layers", "md2pr_word_last4", DEFAULT),
    ("the word level on positives only", "md2pr_word_positives", DEFAULT),
    ("the word level with beta warmed up", "md2pr_word_warmup", DEFAULT),
    ("the word level with beta decayed", "md2pr_word_decay", DEFAULT),
    ("T_a = 1 instead of 0.4 (beta 0.1): the teacher's attention unsharpened", "md2pr_word_0.1_ta1", "md2pr_word_0.1"),
    ("the best word-level recipe (chosen on dev) vs beta 0", "md2pr_word_best", DEFAULT),
    ("the adaptive rule vs a fixed threshold (t(q,d) >= t(q,d+))", DEFAULT, "md2pr_fixed"),
    ("the adaptive rule vs the quantile rule (p = 0.1)", DEFAULT, "md2pr_quantile"),
    ("a second round (re-mined with the round-1 student)", "md2pr_2_rounds", DEFAULT),
    ("UMBRELA grades instead of the cross-encoder as teacher", "md2pr_umbrela", DEFAULT),
    (
        "recorded targets, every passage token (fp16) vs the online teacher (beta 1)",
        "md2pr_word_1",
        "md2pr_word_1_online",
    ),
    ("recorded top-16 attention targets vs the online teacher (beta 1)", "md2pr_word_1_top16", "md2pr_word_1_online"),
)


def teacher_gaps(out: Path, regime: str) -> list[dict]:
    """The folds' ``teacher_gap.json`` (``quality.py --teacher-gaps``): teacher vs starting student on dev pools."""
    return [json.loads(p.read_text()) for p in sorted((out / regime).glob("fold*/teacher_gap.json"))]


def _gap_lines(regime: str, gaps: list[dict]) -> list[str]:
    if not gaps:
        return []
    lines = [
        f"\n### Regime {regime}: the teacher's lead on dev (each fold's dev topics; both rerank every query's judged "
        "pool)\n",
        "| fold | dev topics | teacher nDCG@10 | student nDCG@10 | teacher - student |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {g['fold']} | {g['n_queries']} | {g['teacher']:.4f} | {g['student']:.4f} | {g['gap']:+.4f} |" for g in gaps
    ]
    return lines


def seed_mean(part: list[dict], recipe: str, qrels: str, metric: str = "ndcg@10") -> tuple[dict[str, float], int]:
    """{topic: mean over the seeds run on its fold} of one recipe, and the largest number of seeds of a fold."""
    values: dict[str, list[float]] = defaultdict(list)
    seeds: dict[int, set] = defaultdict(set)
    for r in part:
        if r["recipe"] == recipe and qrels in r:
            seeds[r["fold"]].add(r["seed"])
            for topic, value in r[qrels]["per_query"][metric].items():
                values[topic].append(value)
    return {t: statistics.mean(v) for t, v in values.items()}, max((len(s) for s in seeds.values()), default=0)


def ablation_table(part: list[dict]) -> list[dict]:
    """Each ablation's paired bootstrap CI of nDCG@10 (with minus without) on the test topics both recipes ran,
    per-topic values averaged over the seeds run (UMBRELA grades, and the NIST topics among them)."""
    from md2pr_st.evaluation import paired_bootstrap

    rows = []
    for question, with_it, without in ABLATIONS:
        row: dict = {"question": question, "with": with_it, "without": without}
        for qrels in ("umbrela", "nist"):
            a, seeds_a = seed_mean(part, with_it, qrels)
            b, seeds_b = seed_mean(part, without, qrels)
            if set(a) & set(b):
                row[qrels] = paired_bootstrap(a, b)
                row["seeds"] = [seeds_a, seeds_b]
        if "umbrela" in row:
            row["folds"] = sorted(
                {r["fold"] for r in part if r["recipe"] == with_it}
                & {r["fold"] for r in part if r["recipe"] == without}
            )
            rows.append(row)
    return rows


def _ablation_lines(regime: str, rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        f"\n### Regime {regime}: what each part is worth (nDCG@10, with minus without, paired on the test topics both "
        "ran; per-topic values averaged over the seeds run)\n",
        "| what | with | without | folds | seeds (most on a fold) | topics | UMBRELA [95% CI] | NIST topics | NIST [95% CI] |",
        "|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = []
        for qrels in ("umbrela", "nist"):
            ci = row.get(qrels)
            text = _ci_text(ci)
            cells += [text] if qrels == "umbrela" else [str(ci["n"]) if ci else "", text]
        folds = ",".join(str(f) for f in row["folds"])
        seeds = "/".join(str(s) for s in row["seeds"])
        lines.append(f"| {row['question']} | {row['with']} | {row['without']} | {folds} | {seeds} | "
                     f"{row['umbrela']['n']} | " + " | ".join(cells) + " |")  # fmt: skip
    return lines


def dev_table(part: list[dict], seed: int, reference: str = DEFAULT) -> dict:
    """Per fold, each recipe's dev nDCG@10 (the fold's dev topics, where choices are made) and the paired bootstrap
    CI of its difference to ``reference`` on the same topics."""
    from md2pr_st.evaluation import paired_bootstrap

    out: dict = {}
    for fold in sorted({r["fold"] for r in part}):
        runs = {r["recipe"]: r for r in part if r["fold"] == fold and r["seed"] == seed and "dev" in r}
        if not runs:
            continue
        ref = runs.get(reference)
        out[fold] = {
            name: {
                "ndcg@10": r["dev"]["ndcg@10"],
                "topics": r["dev"]["n_queries"],
                **(
                    {
                        "vs_" + reference: paired_bootstrap(
                            r["dev"]["per_query"]["ndcg@10"], ref["dev"]["per_query"]["ndcg@10"]
                        )
                    }
                    if ref is not None and name != reference
                    else {}
                ),
            }  # fmt: skip
            for name, r in runs.items()
        }
    return out


def _dev_lines(regime: str, table: dict, reference: str = DEFAULT) -> list[str]:
    if not table:
        return []
    lines = [f"\n### Regime {regime}, dev topics (UMBRELA): where the choices are made\n"]
    lines += ["| fold | recipe | dev nDCG@10 | topics | - " + reference + " [95% CI] |", "|---:|---|---:|---:|---:|"]
    for fold, runs in table.items():
        for name in _order([{"recipe": n} for n in runs]):
            row = runs[name]
            ci = row.get("vs_" + reference)
            diff = _ci_text(ci)
            lines.append(f"| {fold} | {name} | {row['ndcg@10']:.4f} | {row['topics']} | {diff} |")
    return lines


def _ci_text(ci: dict | None) -> str:
    """``+0.0115 [+0.0072, +0.0160]``: a paired bootstrap result's mean difference and 95 % interval."""
    return f"{ci['mean_diff']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}]" if ci else ""


def _order(part: list[dict]) -> list[str]:
    order = ["base", "teacher_rerank", "mpnet_as_is", *HOST]
    names = {r["recipe"] for r in part}
    return [n for n in order if n in names] + sorted(n for n in names if n not in order)


def _seed_spread(part: list[dict], recipe: str, qrels: str, folds: list[int]) -> dict | None:
    """Mean nDCG@10 over the folds per seed, for recipes run with several seeds on every fold."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for r in part:
        if r["recipe"] == recipe and qrels in r:
            by_seed[r["seed"]].append(r[qrels]["ndcg@10"] * r[qrels]["n_queries"])
    complete = {}
    for seed, values in by_seed.items():
        runs = [r for r in part if r["recipe"] == recipe and r["seed"] == seed and qrels in r]
        if len(runs) == len(folds):
            complete[seed] = sum(values) / sum(r[qrels]["n_queries"] for r in runs)
    if len(complete) < 2:
        return None
    return {"per_seed": complete, "min": min(complete.values()), "max": max(complete.values())}


def _table(regime: str, qrels: str, folds: list[int], best_host: str | None, rows: list[dict]) -> list[str]:
    name = {"umbrela": "UMBRELA grades", "nist": "NIST assessors' grades"}[qrels]
    lines = [
        f"\n## Regime {regime}, {name} (the test topics of the folds each recipe finished; differences paired on "
        "the topics both have)\n",
        "| recipe | topics | " + " | ".join(METRICS) + " | " + " | ".join(f"fold {f}" for f in folds)
        + f" | nDCG@10 - {best_host or 'best host (none run)'} [95% CI] | nDCG@10 - base [95% CI] | seeds | s/run |",
        "|---|" + "---:|" * (len(METRICS) + len(folds) + 5),
    ]  # fmt: skip
    for row in rows:
        cells = [str(row["topics"]), *(f"{row[m]:.4f}" if row[m] is not None else "-" for m in METRICS)]
        cells += [f"{row['folds'][f]:.4f}" if row["folds"][f] is not None else "" for f in folds]
        for key in ("vs_best_host", "vs_base"):
            ci = row.get(key)
            cells.append(_ci_text(ci))
        spread = row.get("seeds")
        cells.append(f"{spread['min']:.4f}-{spread['max']:.4f} ({len(spread['per_seed'])})" if spread else "")
        cells.append(f"{row['seconds']:.0f}")
        lines.append(f"| {row['recipe']} | " + " | ".join(cells) + " |")
    return lines


def _complete(rows: list[dict]) -> list[dict]:
    """The rows of the recipes run on every topic (every fold), so that the chart's bars share their topics."""
    most = max((r["topics"] for r in rows), default=0)
    return [r for r in rows if r["topics"] == most]


def chart(summary: dict, path: Path) -> None:
    """Mean nDCG@10 per recipe (UMBRELA, all topics), with the 95 % CI of the difference to base as whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A regime with only the reference rows run says nothing in a chart (its table says what ran).
    regimes = [r for r in summary["regimes"] if len(_complete(summary["regimes"][r]["umbrela"]["rows"])) > 2]
    if not regimes:
        return
    fig, axes = plt.subplots(1, len(regimes), figsize=(8 * len(regimes), 4.8), squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        rows = _complete(summary["regimes"][regime]["umbrela"]["rows"])
        names = [r["recipe"] for r in rows]
        labels = [f"{r['recipe']} ({r['topics']} topics)" for r in rows]
        values = [r["ndcg@10"] for r in rows]
        low = [r["vs_base"]["mean_diff"] - r["vs_base"]["low"] if "vs_base" in r else 0 for r in rows]
        high = [r["vs_base"]["high"] - r["vs_base"]["mean_diff"] if "vs_base" in r else 0 for r in rows]
        colors = [
            "#999999"
            if n in ("base", "teacher_rerank", "mpnet_as_is")
            else "#4c72b0"
            if n in (*HOST, "host_best")
            else "#c44e52"
            for n in names
        ]
        ax.barh(range(len(rows)), values, xerr=[low, high], color=colors, capsize=3)
        ax.set_yticks(range(len(rows)), labels)
        ax.invert_yaxis()
        base = next((r["ndcg@10"] for r in rows if r["recipe"] == "base"), None)
        if base is not None:
            ax.axvline(base, color="black", linestyle=":", linewidth=1)
        lo = min(v - d for v, d in zip(values, low)) - 0.02
        ax.set_xlim(lo, max(v + d for v, d in zip(values, high)) + 0.02)
        ax.set_xlabel("nDCG@10, test topics; whiskers: 95% CI of the paired difference to base", fontsize=9)
        ax.set_title(f"Regime {regime} ({rows[0]['topics']} topics, recipes run on every fold)\n"
                     "grey: references, blue: host recipes, red: MD2PR", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
