"""The README's results table says what its committed result file says."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def results_rows(readme: str) -> tuple[Path, list[list[str]]]:
    """The result file the Results section names, and the cells of its table's rows."""
    section = readme.split("## Results", 1)[1].split("\n## ", 1)[0]
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
