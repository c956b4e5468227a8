"""The README's results table says what its committed result file says."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def results_rows(readme: str, heading: str = "## Results") -> tuple[Path, list[list[str]]]:
    """The result file the section under ``heading`` names, and the cells of its table's rows (up to the next
    heading)."""
    section = re.split(r"\n#{2,3} ", readme.split(heading + "\n", 1)[1], maxsplit=1)[0]
    source = ROOT / re.search(r"\]\((benchmarks/results/[^)]+\.json)\)", section).group(1)
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return source, [[cell.strip() for cell in row] for row in rows[1:]]  # the header row out


def test_every_number_of_the_readme_results_table_is_in_its_result_file():
    source, rows = results_rows((ROOT / "README.md").read_text(encoding="utf-8"))
    summary = json.loads(source.read_text(encoding="utf-8"))
    assert len(rows) >= 4
    for _teacher, student, recipe, ndcg, difference in rows:
        regime = student.split(":")[0]
        name = re.findall(r"`([^`]+)`", recipe)[-1]
        table = {r["recipe"]: r for r in summary["regimes"][regime]["umbrela"]["rows"]}
        assert ndcg == f"{table[name]['ndcg@10']:.4f}", (regime, name)
        if difference:
            without, mean, low, high = re.match(
                r"vs `([^`]+)`: ([+-][\d.]+) \[([+-][\d.]+), ([+-][\d.]+)\]", difference
            ).groups()
            ablation = next(
                a for a in summary["regimes"][regime]["ablations"] if (a["with"], a["without"]) == (name, without)
            )
            ci = ablation["umbrela"]
            assert [mean, low, high] == [f"{ci[k]:+.4f}" for k in ("mean_diff", "low", "high")], (regime, name)


def test_every_number_of_the_readme_teacher_strength_table_is_in_its_result_file():
    """Each row: a teacher variant, a fold, a student regime, the teacher's lead on the dev pools and the student's
    open-retrieval nDCG@10 before and after the teacher reranks its top k."""
    source, rows = results_rows((ROOT / "README.md").read_text(encoding="utf-8"), "### How far the teacher leads")
    summary = json.loads(source.read_text(encoding="utf-8"))
    results = {(r["variant"], r["fold"]): r for r in summary["results"]}
    assert len(rows) >= 2
    for teacher, fold, student, lead, rerank in rows:
        variant = re.findall(r"`([^`]+)`", teacher)[-1]
        regime = results[(variant, int(fold))]["regimes"][student.split(":")[0]]
        assert lead == f"{regime['dev_pool']['gap']:+.4f}", (variant, fold, student)
        opened = regime["open_retrieval"]
        before, after = (opened[k]["ndcg@10"] for k in ("student", f"rerank@{summary['rerank_k']}"))
        assert rerank == f"{before:.4f} -> {after:.4f} ({after - before:+.4f})", (variant, fold, student)
