from __future__ import annotations

import json
import math

import numpy as np
import pytest
from datasets import Dataset

from md2pr_st.false_negatives import FalseNegativeFilter, dynamic_margin

# Three rows, four candidates each, with known teacher logits (positive first). Gaps t(q,d+) - t(q,d):
#   A: pos 6: cands 6.5 5.0 2.0 1.0  -> gaps -0.5 1 4 5
#   B: pos 3: cands 2.5 0.0 -1.0 -3.0 -> gaps 0.5 3 4 6
#   C: pos 2: cands 1.0 0.0 -2.0 -4.0 -> gaps 1 2 4 6
# Sorted (N = 12): -0.5 0.5 1 1 2 3 4 4 4 5 6 6. For p = 0.3: h = 11 * 0.3 = 3.3, Q = g3 + 0.3 (g4 - g3) = 1.3.
SCORES = [[6.0, 6.5, 5.0, 2.0, 1.0], [3.0, 2.5, 0.0, -1.0, -3.0], [2.0, 1.0, 0.0, -2.0, -4.0]]


def rows(scores=SCORES) -> Dataset:
    return Dataset.from_dict(
        {
            "query": ["qa", "qb", "qc"],
            "positive": ["pa", "pb", "pc"],
            **{f"negative_{k}": [f"{r}{k}" for r in "abc"] for k in range(1, 5)},
            "scores": scores,
        }
    )


def test_dynamic_margin_is_the_documented_quantile():
    gaps = np.array(SCORES)[:, :1] - np.array(SCORES)[:, 1:]
    assert dynamic_margin(gaps, quantile=0.3) == pytest.approx(1.3)
    assert dynamic_margin(gaps, quantile=0.0) == 0.0  # Q_0 = -0.5, clipped at min_margin = 0
    assert dynamic_margin(gaps, quantile=0.0, min_margin=None) == -0.5
    assert dynamic_margin(gaps, quantile=1.0, max_margin=2.5) == 2.5


def test_dynamic_rule_flags_refills_and_counts_exactly():
    fn_filter = FalseNegativeFilter(rule="dynamic", quantile=0.3, num_negatives=2)
    out = fn_filter.apply(rows())
    assert fn_filter.margin_ == pytest.approx(1.3)
    # Flagged (gap <= 1.3): a1, a2, b1, c1. Each row is refilled from its remaining candidates, in rank order.
    assert out.column_names == ["query", "positive", "negative_1", "negative_2", "scores"]
    assert out["negative_1"] == ["a3", "b2", "c2"] and out["negative_2"] == ["a4", "b3", "c3"]
    assert out["scores"] == [[6.0, 2.0, 1.0], [3.0, 0.0, -1.0], [2.0, 0.0, -2.0]]
    stats = fn_filter.statistics["rounds"][0]
    assert {k: stats[k] for k in ("rows", "candidates_scored", "flagged", "dropped_rows", "refilled_rows")} == {
        "rows": 3,
        "candidates_scored": 12,
        "flagged": 4,
        "dropped_rows": 0,
        "refilled_rows": 3,
    }
    assert stats["rows_out"] == 3 and stats["flagged_fraction"] == pytest.approx(4 / 12)
    assert stats["margin"] == pytest.approx(1.3)
    # theta = t(q, d+) - 1.3 per row: 4.7, 1.7, 0.7
    assert stats["thresholds"]["min"] == pytest.approx(0.7) and stats["thresholds"]["max"] == pytest.approx(4.7)


def test_rows_without_enough_candidates_are_dropped_and_counted():
    fn_filter = FalseNegativeFilter(rule="dynamic", quantile=0.3, num_negatives=3)
    out = fn_filter.apply(rows())
    assert out["query"] == ["qb", "qc"]  # row A keeps only 2 of 4 candidates
    stats = fn_filter.statistics["rounds"][0]
    assert (stats["dropped_rows"], stats["rows_out"], stats["flagged"]) == (1, 2, 4)
    assert all(len(s) == 4 for s in out["scores"])


def test_dynamic_margin_moves_with_the_score_distribution_between_rounds():
    fn_filter = FalseNegativeFilter(rule="dynamic", quantile=0.3, num_negatives=2)
    fn_filter.apply(rows())
    harder = [[s[0]] + [c + 1.0 for c in s[1:]] for s in SCORES]  # round 2: negatives one logit harder
    fn_filter.apply(rows(harder))
    easier = [[s[0]] + [c - 3.0 for c in s[1:]] for s in SCORES]  # round 3: all gaps + 3
    fn_filter.apply(rows(easier))
    margins = [r["margin"] for r in fn_filter.statistics["rounds"]]
    assert margins == pytest.approx([1.3, 0.3, 4.3])
    assert [r["round"] for r in fn_filter.statistics["rounds"]] == [1, 2, 3]
    # Round 2: theta = t(q, d+) - m_2 = 6 - 0.3 = 5.7 for row A.
    assert fn_filter.statistics["rounds"][1]["thresholds"]["max"] == pytest.approx(5.7)


@pytest.mark.parametrize(
    "rule, kwargs, flagged",
    [
        ("margin", {"margin": 1.0}, 4),  # gap <= 1: a1 (-0.5), a2 (1), b1 (0.5), c1 (1)
        ("relative", {"relative_margin": 0.1}, 1),  # theta 5.4, 2.7, 1.8: only a1 (6.5)
        ("absolute", {"threshold": 2.0}, 4),  # t >= 2: a1 a2 a3, b1
    ],
)
def test_fixed_rules(rule, kwargs, flagged):
    fn_filter = FalseNegativeFilter(rule=rule, num_negatives=1, **kwargs)
    decision = fn_filter.decide(rows()[:])
    assert int(decision["flags"].sum()) == flagged
    fn_filter.apply(rows())
    assert fn_filter.statistics["rounds"][0]["flagged"] == flagged


def test_fixed_rules_work_without_fit_in_a_plain_map():
    fn_filter = FalseNegativeFilter(rule="relative", relative_margin=0.1, num_negatives=3)
    data = rows()
    out = data.map(fn_filter, batched=True, batch_size=2, remove_columns=data.column_names)
    assert out["negative_1"] == ["a2", "b1", "c1"]
    stats = fn_filter.statistics["rounds"][0]
    assert (stats["rows"], stats["flagged"], stats["candidates_scored"]) == (3, 1, 12)


def test_keep_as_positives_adds_one_row_per_flagged_candidate():
    fn_filter = FalseNegativeFilter(rule="margin", margin=1.0, num_negatives=2, keep_as_positives=True)
    out = fn_filter.apply(rows())
    assert out["positive"] == ["pa", "a1", "a2", "pb", "b1", "pc", "c1"]
    assert out["scores"][1] == [6.5, 2.0, 1.0]  # the false negative's own logit first
    assert fn_filter.statistics["rounds"][0]["extra_positive_rows"] == 4


def test_dynamic_without_fit_and_bad_input_give_clear_errors():
    data = rows()
    with pytest.raises(RuntimeError, match="call fn_filter.fit"):
        data.map(FalseNegativeFilter(num_negatives=2), batched=True, remove_columns=data.column_names)
    with pytest.raises(ValueError, match="NaN or infinite"):
        FalseNegativeFilter().fit(rows([[1.0, math.nan, 0, 0, 0], *SCORES[1:]]))
    with pytest.raises(ValueError, match="no candidate columns"):
        FalseNegativeFilter().fit(data.remove_columns([f"negative_{k}" for k in range(1, 5)]))
    with pytest.raises(ValueError, match="empty candidate"):
        FalseNegativeFilter().fit(data.map(lambda r: {"negative_3": ""}))
    with pytest.raises(ValueError, match="lacks \\['positive'\\]"):
        FalseNegativeFilter().fit(data.remove_columns("positive"))
    with pytest.raises(ValueError, match="has no positive"):
        FalseNegativeFilter().fit(data.map(lambda r: {"positive": None}))
    with pytest.raises(ValueError, match="no teacher and the input has no 'scores'"):
        FalseNegativeFilter().fit(data.remove_columns("scores"))
    with pytest.raises(ValueError, match="5 teacher scores per row"):
        FalseNegativeFilter().fit(rows([s[:4] for s in SCORES]))
    with pytest.raises(ValueError, match="num_negatives=5 but the input has only 4"):
        FalseNegativeFilter(num_negatives=5).fit(data)
    with pytest.raises(ValueError, match="needs relative_margin"):
        FalseNegativeFilter(rule="relative")
    with pytest.raises(ValueError, match="Unknown rule"):
        FalseNegativeFilter(rule="sigmoid")


class NaNTeacher:
    def score(self, pairs, batch_size=None, show_progress_bar=None):
        return np.array([math.nan if "b" in d else 1.0 for _, d in pairs], dtype=np.float32)


def test_nan_from_a_teacher_is_reported():
    with pytest.raises(ValueError, match="5 NaN or infinite scores, e.g. row 1, positive"):
        FalseNegativeFilter(NaNTeacher()).fit(rows().remove_columns("scores").select([0, 1]))


def test_duplicate_of_the_positive_is_flagged_by_a_real_cross_encoder(tiny_cross_encoder_path):
    from md2pr_st.teacher import Teacher

    positive = "paris is the capital city of france"
    data = Dataset.from_dict(
        {
            "query": ["what is the capital of france", "what is a python"],
            "positive": [positive, "the python is a snake"],
            "negative_1": ["the cat is a dog", "coffee is a drink"],
            "negative_2": [positive, "java is an island"],  # an exact duplicate of the positive
            "negative_3": ["Paris is  the CAPITAL city of France", "the river is in the city"],  # case/space variant
            "negative_4": ["tea and coffee", "the sea and the ocean"],
        }
    )
    teacher = Teacher(str(tiny_cross_encoder_path), batch_size=8)
    fn_filter = FalseNegativeFilter(teacher, num_negatives=2)
    decision = fn_filter.fit(data).decide(data[:])
    # The duplicate and the variant (same lower-cased tokens) get exactly the positive's logit: gap 0 <= m_r.
    assert decision["candidate_scores"][0, 1] == decision["positive_scores"][0]
    assert decision["candidate_scores"][0, 2] == decision["positive_scores"][0]
    assert decision["flags"][0, 1] and decision["flags"][0, 2]
    out = fn_filter.apply(data, fit=False)
    assert positive not in (out[0]["negative_1"], out[0]["negative_2"])


def test_map_pass_reads_the_teacher_cache(tiny_cross_encoder_path, monkeypatch):
    from md2pr_st.teacher import Teacher

    teacher = Teacher(str(tiny_cross_encoder_path), batch_size=8)
    data = Dataset.from_dict(
        {"query": ["the cat", "the dog"], "positive": ["a cat", "a dog"], "negative_1": ["tea", "sea"],
         "negative_2": ["java", "city"], "negative_3": ["river", "ocean"]}
    )  # fmt: skip
    fn_filter = FalseNegativeFilter(teacher, quantile=0.5, num_negatives=1).fit(data)
    scored: list[int] = []
    original = teacher._run

    def counting(pairs, *args, **kwargs):
        scored.append(len(pairs))
        return original(pairs, *args, **kwargs)

    monkeypatch.setattr(teacher, "_run", counting)
    out = fn_filter.apply(data, fit=False)
    assert scored == []  # all 8 pairs came from the cache
    assert len(out) + fn_filter.statistics["rounds"][0]["dropped_rows"] == 2
    assert all(len(s) == 2 for s in out["scores"])


def test_statistics_json_and_histogram_png(tmp_path):
    fn_filter = FalseNegativeFilter(rule="dynamic", quantile=0.3, num_negatives=2)
    fn_filter.apply(rows())
    saved = json.loads(fn_filter.save_statistics(tmp_path / "stats.json").read_text())
    assert saved["rule"] == "dynamic" and saved["rounds"][0]["flagged"] == 4
    assert saved["rounds"][0]["gaps"]["count"] == 12
    png = fn_filter.plot(tmp_path / "gaps.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_feeds_the_sentence_level_loss(tiny_model):
    import torch

    from md2pr_st.losses import SentenceLevelDistillationLoss

    out = FalseNegativeFilter(rule="dynamic", quantile=0.3, num_negatives=2).apply(rows())
    loss = SentenceLevelDistillationLoss(tiny_model)
    features = [tiny_model.tokenize(out[c]) for c in ("query", "positive", "negative_1", "negative_2")]
    value = loss(features, torch.tensor(out["scores"]))
    assert value.ndim == 0 and torch.isfinite(value)


def test_refill_by_teacher_order_and_continued_rounds(tmp_path):
    fn_filter = FalseNegativeFilter(rule="absolute", threshold=2.0, num_negatives=1, refill_order="teacher")
    out = fn_filter.apply(rows([[3.0, 1.0, 2.5, -1.0, 1.5], *SCORES[1:]]))
    # Row A: 2.5 is flagged (>= 2); of the rest the teacher's best is 1.5 (negative_4), not the first in rank order.
    assert out["negative_1"] == ["a4", "b2", "c1"]
    assert fn_filter.statistics["rounds"][0]["refilled_rows"] == 1  # only row B had a flagged first candidate
    fn_filter.save_statistics(tmp_path / "stats.json")
    later = FalseNegativeFilter(rule="absolute", threshold=2.0, num_negatives=1).load_statistics(
        tmp_path / "stats.json"
    )
    later.apply(rows())
    assert [r["round"] for r in later.statistics["rounds"]] == [1, 2]
    assert later.plot(tmp_path / "round2.png").is_file()


def test_cli_filter_round_trip(tmp_path):
    from datasets import load_from_disk

    from md2pr_st.cli import main

    rows().save_to_disk(str(tmp_path / "mined"))
    stats_file = tmp_path / "rounds.json"
    argv = ["filter", "--input", str(tmp_path / "mined"), "--output", str(tmp_path / "filtered"), "--quantile", "0.3"]
    argv += ["--num_negatives", "2", "--statistics", str(stats_file)]
    assert main(argv) == 0
    out = load_from_disk(str(tmp_path / "filtered"))
    assert out["negative_1"] == ["a3", "b2", "c2"]
    assert (tmp_path / "filtered" / "md2pr_filter_gaps.png").is_file()
    assert main(argv) == 0  # a second round continues the statistics file
    rounds = json.loads(stats_file.read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["margin"] == pytest.approx(1.3)
    assert main(argv[:-4] + ["--rule", "relative"]) == 1  # relative needs --relative_margin: a clear error


def test_loading_cumulative_statistics_files_round_by_round(tmp_path):
    fn_filter = FalseNegativeFilter(rule="dynamic", quantile=0.3, num_negatives=2)
    fn_filter.apply(rows())
    fn_filter.save_statistics(tmp_path / "round_1.json")
    fn_filter.apply(rows([[s[0]] + [c + 1.0 for c in s[1:]] for s in SCORES]))
    fn_filter.save_statistics(tmp_path / "round_2.json")  # holds rounds 1 and 2
    resumed = FalseNegativeFilter(rule="dynamic", quantile=0.3, num_negatives=2)
    resumed.load_statistics(tmp_path / "round_1.json").load_statistics(tmp_path / "round_2.json")
    assert [r["round"] for r in resumed.statistics["rounds"]] == [1, 2]
    assert resumed.margin_ == pytest.approx(0.3)
    with pytest.raises(RuntimeError, match="not fitted by this object"):
        resumed.plot(tmp_path / "x.png")
    resumed.apply(rows())
    assert [r["round"] for r in resumed.statistics["rounds"]] == [1, 2, 3]
    assert resumed.plot(tmp_path / "round3.png").is_file()
    (tmp_path / "bad.json").write_text('{"rounds": [{"round": 2}]}')
    with pytest.raises(ValueError, match="not numbered 1..n"):
        FalseNegativeFilter().load_statistics(tmp_path / "bad.json")


def test_mask_action_keeps_flagged_candidates_for_the_loss_to_mask():
    rows = Dataset.from_dict(
        {
            "query": ["q1", "q2"],
            "positive": ["p1", "p2"],
            "negative_1": ["dup1", "a2"],
            "negative_2": ["b1", "b2"],
            "negative_3": ["c1", "c2"],
            "scores": [[3.0, 2.0, 0.0, 1.0], [3.0, 0.0, 0.0, 2.0]],  # graded scores, positive first
        }
    )
    fn_filter = FalseNegativeFilter(rule="dynamic", quantile=0.0, num_negatives=2, action="mask")
    out = fn_filter.apply(rows)
    assert fn_filter.margin_ == 1.0  # the smallest gap: 3 - 2
    # The first two candidates stay in rank order, the flagged dup1 included, with their scores.
    assert out["negative_1"] == ["dup1", "a2"] and out["negative_2"] == ["b1", "b2"]
    assert out["scores"] == [[3.0, 2.0, 0.0], [3.0, 0.0, 0.0]]
    stats = fn_filter.statistics["rounds"][-1]
    assert (stats["flagged"], stats["masked"], stats["dropped_rows"], stats["refilled_rows"]) == (2, 1, 0, 0)
    # The loss masks exactly the kept flagged candidate with the same margin.
    import torch

    from md2pr_st.losses.md2pr import false_negative_mask

    mask = false_negative_mask(torch.tensor(out["scores"]), fn_filter.margin_)
    assert mask.tolist() == [[False, True, False], [False, False, False]]
    with pytest.raises(ValueError, match="action='mask'.*'dynamic' and 'margin' rules"):
        FalseNegativeFilter(rule="relative", relative_margin=0.1, action="mask")
    with pytest.raises(ValueError, match="would keep exactly the flagged ones"):
        FalseNegativeFilter(action="mask", refill_order="teacher")
    with pytest.raises(ValueError, match="action must be 'drop' or 'mask'"):
        FalseNegativeFilter(action="hide")
