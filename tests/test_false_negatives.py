from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
from datasets import Dataset

from md2pr_st.false_negatives import (
    FalseNegativeFilter,
    dynamic_margin,
    fit_gaussian_mixture,
    mixture_threshold,
    positives_threshold,
)

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
    fn_filter = FalseNegativeFilter(rule="dynamic", quantile=0.3, num_negatives=2, action="drop")
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
    fn_filter = FalseNegativeFilter(rule="dynamic", quantile=0.3, num_negatives=3, action="drop")
    out = fn_filter.apply(rows())
    assert out["query"] == ["qb", "qc"]  # row A keeps only 2 of 4 candidates
    stats = fn_filter.statistics["rounds"][0]
    assert (stats["dropped_rows"], stats["rows_out"], stats["flagged"]) == (1, 2, 4)
    assert all(len(s) == 4 for s in out["scores"])


def test_dynamic_margin_moves_with_the_score_distribution_between_rounds():
    fn_filter = FalseNegativeFilter(rule="dynamic", quantile=0.3, num_negatives=2, action="drop")
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
    fn_filter = FalseNegativeFilter(rule=rule, num_negatives=1, **kwargs, action="drop")
    decision = fn_filter.decide(rows()[:])
    assert int(decision["flags"].sum()) == flagged
    fn_filter.apply(rows())
    assert fn_filter.statistics["rounds"][0]["flagged"] == flagged


def test_fixed_rules_map_without_fit_and_fit_counts_what_the_map_does():
    fn_filter = FalseNegativeFilter(rule="relative", relative_margin=0.1, num_negatives=3, action="drop")
    data = rows()
    out = data.map(fn_filter.mapper(), batched=True, batch_size=2, remove_columns=data.column_names)
    assert out["negative_1"] == ["a2", "b1", "c1"]
    assert fn_filter.statistics["rounds"] == []  # mapping changes nothing: the statistics come from fit
    stats = fn_filter.fit(data).statistics["rounds"][0]
    assert (stats["rows"], stats["flagged"], stats["candidates_scored"], stats["rows_out"]) == (3, 1, 12, len(out))


def test_keep_as_positives_adds_one_row_per_flagged_candidate():
    fn_filter = FalseNegativeFilter(rule="margin", margin=1.0, num_negatives=2, keep_as_positives=True, action="drop")
    out = fn_filter.apply(rows())
    assert out["positive"] == ["pa", "a1", "a2", "pb", "b1", "pc", "c1"]
    assert out["scores"][1] == [6.5, 2.0, 1.0]  # the false negative's own logit first
    assert fn_filter.statistics["rounds"][0]["extra_positive_rows"] == 4


def test_dynamic_without_fit_and_bad_input_give_clear_errors():
    data = rows()
    with pytest.raises(RuntimeError, match="call fn_filter.fit"):
        FalseNegativeFilter(num_negatives=2).mapper()
    with pytest.raises(RuntimeError, match="call fn_filter.fit"):
        FalseNegativeFilter(rule="positives").decide(data[:])
    with pytest.raises(ValueError, match="no 'scores' column of teacher scores"):
        FalseNegativeFilter(rule="margin", margin=1.0).mapper()(data.remove_columns("scores")[:])
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
    fn_filter = FalseNegativeFilter(teacher, num_negatives=2, action="drop")
    decision = fn_filter.fit(data).decide(data[:])
    # The duplicate and the variant (same lower-cased tokens) get exactly the positive's logit: gap 0 <= m_r.
    assert decision["candidate_scores"][0, 1] == decision["positive_scores"][0]
    assert decision["candidate_scores"][0, 2] == decision["positive_scores"][0]
    assert decision["flags"][0, 1] and decision["flags"][0, 2]
    out = fn_filter.apply(data, fit=False)
    assert positive not in (out[0]["negative_1"], out[0]["negative_2"])


def test_the_teacher_scores_each_pair_once_and_the_mapper_holds_no_teacher(tiny_cross_encoder_path, monkeypatch):
    from md2pr_st.teacher import Teacher

    teacher = Teacher(str(tiny_cross_encoder_path), batch_size=8)
    data = Dataset.from_dict(
        {"query": ["the cat", "the dog"], "positive": ["a cat", "a dog"], "negative_1": ["tea", "sea"],
         "negative_2": ["java", "city"], "negative_3": ["river", "ocean"]}
    )  # fmt: skip
    scored: list[int] = []
    original = teacher._run

    def counting(pairs, *args, **kwargs):
        scored.append(len(pairs))
        return original(pairs, *args, **kwargs)

    monkeypatch.setattr(teacher, "_run", counting)
    fn_filter = FalseNegativeFilter(teacher, quantile=0.5, num_negatives=1, action="drop")
    out = fn_filter.apply(data)
    assert scored == [8]  # one teacher call for the round: 2 positives and 6 candidates
    assert len(out) + fn_filter.statistics["rounds"][0]["dropped_rows"] == 2
    assert all(len(s) == 2 for s in out["scores"])
    mapper = fn_filter.mapper()
    assert pickle.loads(pickle.dumps(mapper)) == mapper and len(pickle.dumps(mapper)) < 1000
    with pytest.raises(TypeError, match="fn_filter.mapper"):
        fn_filter(data[:])


def test_num_proc_gives_the_rows_and_statistics_of_one_process():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=(40, 5)) * 2, 3)
    scores[:, 0] += 2.0  # positives above most candidates
    data = Dataset.from_dict(
        {"query": [f"q{i}" for i in range(40)], "positive": [f"p{i}" for i in range(40)],
         **{f"negative_{k}": [f"d{i}.{k}" for i in range(40)] for k in range(1, 5)}, "scores": scores.tolist()}
    )  # fmt: skip
    results = []
    for num_proc in (None, 2):
        fn_filter = FalseNegativeFilter(
            rule="dynamic", quantile=0.2, num_negatives=2, keep_as_positives=True, action="drop"
        )
        out = fn_filter.apply(data, batch_size=7, num_proc=num_proc)
        results.append((out.to_dict(), fn_filter.statistics))
    assert results[0] == results[1]
    stats = results[0][1]["rounds"][0]
    assert stats["rows_out"] == len(results[0][0]["query"]) and stats["flagged"] > 0


def test_a_second_identical_map_is_read_from_the_datasets_cache(tmp_path, monkeypatch):
    from datasets import load_from_disk

    from md2pr_st.false_negatives import FalseNegativeMapper

    rows().save_to_disk(str(tmp_path / "mined"))
    data = load_from_disk(str(tmp_path / "mined"))
    first = FalseNegativeFilter(rule="dynamic", quantile=0.3, num_negatives=2, action="drop")
    out = first.apply(data)

    def not_again(self, batch):
        raise AssertionError("mapped again instead of reading the cache")

    monkeypatch.setattr(FalseNegativeMapper, "__call__", not_again)
    second = FalseNegativeFilter(rule="dynamic", quantile=0.3, num_negatives=2, action="drop")
    again = second.apply(data)
    assert again.cache_files == out.cache_files and again.to_dict() == out.to_dict()
    assert second.statistics["rounds"] == first.statistics["rounds"]  # fit counts, not the map


def test_statistics_json_and_histogram_png(tmp_path):
    fn_filter = FalseNegativeFilter(rule="dynamic", quantile=0.3, num_negatives=2, action="drop")
    fn_filter.apply(rows())
    saved = json.loads(fn_filter.save_statistics(tmp_path / "stats.json").read_text())
    assert saved["rule"] == "dynamic" and saved["rounds"][0]["flagged"] == 4
    assert saved["rounds"][0]["gaps"]["count"] == 12
    png = fn_filter.plot(tmp_path / "gaps.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_feeds_the_sentence_level_loss(tiny_model):
    import torch

    from md2pr_st.losses import SentenceLevelDistillationLoss

    out = FalseNegativeFilter(rule="dynamic", quantile=0.3, num_negatives=2, action="drop").apply(rows())
    loss = SentenceLevelDistillationLoss(tiny_model)
    features = [tiny_model.tokenize(out[c]) for c in ("query", "positive", "negative_1", "negative_2")]
    value = loss(features, torch.tensor(out["scores"]))
    assert value.ndim == 0 and torch.isfinite(value)


def test_refill_by_teacher_order_and_continued_rounds(tmp_path):
    fn_filter = FalseNegativeFilter(
        rule="absolute", threshold=2.0, num_negatives=1, refill_order="teacher", action="drop"
    )
    out = fn_filter.apply(rows([[3.0, 1.0, 2.5, -1.0, 1.5], *SCORES[1:]]))
    # Row A: 2.5 is flagged (>= 2); of the rest the teacher's best is 1.5 (negative_4), not the first in rank order.
    assert out["negative_1"] == ["a4", "b2", "c1"]
    assert fn_filter.statistics["rounds"][0]["refilled_rows"] == 1  # only row B had a flagged first candidate
    fn_filter.save_statistics(tmp_path / "stats.json")
    later = FalseNegativeFilter(rule="absolute", threshold=2.0, num_negatives=1, action="drop").load_statistics(
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
    argv += ["--rule", "dynamic", "--action", "drop", "--num_negatives", "2", "--statistics", str(stats_file)]
    assert main(argv) == 0
    out = load_from_disk(str(tmp_path / "filtered"))
    assert out["negative_1"] == ["a3", "b2", "c2"]
    assert (tmp_path / "filtered" / "md2pr_filter_gaps.png").is_file()
    assert main(argv) == 0  # a second round continues the statistics file
    rounds = json.loads(stats_file.read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["margin"] == pytest.approx(1.3)
    assert main(argv[:-4] + ["--rule", "relative"]) == 1  # relative needs --relative_margin: a clear error
    argv = ["filter", "--input", str(tmp_path / "mined"), "--output", str(tmp_path / "positives"), "--rule"]
    assert main(argv + ["positives", "--action", "drop", "--num_negatives", "2", "--num_proc", "2"]) == 0
    stats = json.loads((tmp_path / "positives" / "md2pr_filter.json").read_text())["rounds"][-1]
    assert (stats["rule"], stats["quantile"], stats["threshold"], stats["flagged"]) == ("positives", 0.5, 3.0, 2)


def test_loading_cumulative_statistics_files_round_by_round(tmp_path):
    fn_filter = FalseNegativeFilter(rule="dynamic", quantile=0.3, num_negatives=2, action="drop")
    fn_filter.apply(rows())
    fn_filter.save_statistics(tmp_path / "round_1.json")
    fn_filter.apply(rows([[s[0]] + [c + 1.0 for c in s[1:]] for s in SCORES]))
    fn_filter.save_statistics(tmp_path / "round_2.json")  # holds rounds 1 and 2
    resumed = FalseNegativeFilter(rule="dynamic", quantile=0.3, num_negatives=2, action="drop")
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
    with pytest.raises(ValueError, match="action='mask'.*cannot express rule='relative'"):
        FalseNegativeFilter(rule="relative", relative_margin=0.1, action="mask")
    with pytest.raises(ValueError, match="would keep exactly the flagged ones"):
        FalseNegativeFilter(action="mask", refill_order="teacher")
    with pytest.raises(ValueError, match="action must be 'drop' or 'mask'"):
        FalseNegativeFilter(action="hide")


def test_positives_rule_by_hand():
    # Positives 6, 3, 2. p = 0.5: theta_r = 3 flags a1 (6.5) and a2 (5.0); p = 0.25: h = 2 * 0.25 = 0.5,
    # theta_r = 2 + 0.5 * (3 - 2) = 2.5 also flags b1 (2.5). The floor t(q, d) >= t(q, d+) adds nothing new (a1).
    assert positives_threshold([6.0, 3.0, 2.0], quantile=0.25) == 2.5
    for quantile, theta, flagged in ((0.5, 3.0, 2), (0.25, 2.5, 3)):
        fn_filter = FalseNegativeFilter(rule="positives", quantile=quantile, num_negatives=2, action="drop")
        out = fn_filter.apply(rows())
        stats = fn_filter.statistics["rounds"][-1]
        assert fn_filter.threshold_ == theta and stats["threshold"] == theta and stats["margin"] == 0.0
        assert stats["flagged"] == flagged and stats["rows_out"] == len(out) == 3
    assert out["negative_1"] == ["a3", "b2", "c1"]  # p = 0.25: a1, a2 and b1 dropped, rows refilled
    # Without the floor, a candidate above its own low-scoring positive stays a negative: row C's positive scores 2,
    # its candidate 1.0 is below theta_r = 2.5 either way; row A's 6.5 >= 3 is flagged by theta_r alone.
    no_floor = FalseNegativeFilter(rule="positives", min_margin=None, num_negatives=2, action="drop").fit(rows())
    assert no_floor.statistics["rounds"][0]["flagged"] == 2 and no_floor.margin_ is None


def test_mixture_rules_by_hand():
    # Candidates {-1, 1} x 3 and {9, 11}: two clusters (mean 0 and 10, std 1, weights 3/4 and 1/4). Equal stds make
    # log(w1 N_1) - log(w0 N_0) linear: 10 x - 50 + log(1/3) = 0 at theta = 5 + log(3) / 10.
    data = Dataset.from_dict(
        {"query": ["q1", "q2"], "positive": ["p1", "p2"], **{f"negative_{k}": [f"a{k}", f"b{k}"] for k in range(1, 5)},
         "scores": [[9.0, -1.0, 1.0, -1.0, 9.0], [11.0, 1.0, -1.0, 1.0, 11.0]]}
    )  # fmt: skip
    expected = 5 + math.log(3) / 10
    for rule in ("mixture", "positives_mixture"):  # positives 9, 11: the high component is N(10, 1) either way
        fn_filter = FalseNegativeFilter(rule=rule, num_negatives=3)
        out = fn_filter.apply(data)
        stats = fn_filter.statistics["rounds"][0]
        assert fn_filter.threshold_ == pytest.approx(expected, abs=1e-9)
        assert stats["mixture"]["means"] == pytest.approx([0.0, 10.0]) and stats["mixture"]["weights"][1] == 0.25
        assert stats["flagged"] == 2 and out["negative_3"] == ["a3", "b3"]
    mixture = fit_gaussian_mixture([-1.0, 1.0] * 3 + [9.0, 11.0])
    assert mixture.stds == pytest.approx((1.0, 1.0)) and mixture.weights == pytest.approx((0.75, 0.25))
    assert mixture_threshold([2.0] * 5) == (math.inf, None)  # one value: no mixture, nothing flagged


# Positives 5, 4, 3; 12 distinct gaps 1.1 .. 6.5. Round 2 moves every candidate 2 logits closer to its positive.
ROUND_1 = [[5.0, 3.9, 1.8, 0.7, -1.4], [4.0, 2.0, 0.5, -1.0, -2.5], [3.0, 1.5, 0.0, -1.6, -3.0]]
ROUND_2 = [[s[0]] + [c + 2.0 for c in s[1:]] for s in ROUND_1]


def test_the_adaptive_rules_flag_more_as_candidates_move_towards_the_positives():
    shares = {}
    for rule, kwargs in (("dynamic", {"quantile": 0.25}), ("positives", {}), ("positives_mixture", {}),
                         ("mixture", {})):  # fmt: skip
        fn_filter = FalseNegativeFilter(rule=rule, num_negatives=1, **kwargs)
        for scores in (ROUND_1, ROUND_2):
            fn_filter.fit(rows(scores))
        shares[rule] = [r["flagged_fraction"] for r in fn_filter.statistics["rounds"]]
    # h = 11 * 0.25 = 2.75: Q_p lies between the 3rd and 4th smallest gap, so 3 of 12 are flagged in both rounds.
    assert shares["dynamic"] == [0.25, 0.25]
    # theta_r = 4 (median positive): nothing reaches it in round 1; in round 2 a1 (5.9), b1 (4.0), and by the floor
    # c1 (3.5 >= its positive 3).
    assert shares["positives"] == [0.0, 0.25]
    assert shares["positives_mixture"][1] > shares["positives_mixture"][0]
    # The free mixture sees only the candidates' shape: a shift of every candidate shifts theta_r with it.
    assert shares["mixture"][0] == shares["mixture"][1]


def test_threshold_rules_mask_by_margin_and_threshold_and_resume_their_threshold(tmp_path):
    import torch

    from md2pr_st.losses.md2pr import false_negative_mask

    with pytest.raises(ValueError, match="action='mask'.*cannot express rule='relative'.*action='drop'"):
        FalseNegativeFilter(rule="relative", relative_margin=0.1, action="mask")
    masking = FalseNegativeFilter(rule="positives", num_negatives=2, action="mask")
    out = masking.apply(rows())
    stats = masking.statistics["rounds"][-1]
    loss_mask = false_negative_mask(torch.tensor(out["scores"]), stats["margin"], stats["threshold"])
    # The loss flags exactly the kept candidates the filter flagged.
    assert int(loss_mask.sum()) == stats["masked"] > 0
    fn_filter = FalseNegativeFilter(rule="positives", num_negatives=2)
    fn_filter.fit(rows()).save_statistics(tmp_path / "stats.json")
    resumed = FalseNegativeFilter(rule="positives", num_negatives=2).load_statistics(tmp_path / "stats.json")
    assert resumed.mapper() == fn_filter.mapper() and resumed.threshold_ == 3.0
    assert resumed.apply(rows(), fit=False).to_dict() == fn_filter.apply(rows(), fit=False).to_dict()
    assert len(resumed.statistics["rounds"]) == 1  # apply(fit=False) maps with the loaded round, adds none


def test_pipeline_accepts_the_adaptive_rules():
    from md2pr_st.config import PipelineArguments

    assert PipelineArguments().filter_rule == "positives" and PipelineArguments().filter_action == "mask"
    assert PipelineArguments(filter_rule="positives").filter_quantile is None  # the rule's own default p
    assert PipelineArguments(filter_rule="positives_mixture").filter_rule == "positives_mixture"
    assert PipelineArguments(filter_rule="positives", sentence_scores="qrels").filter_action == "mask"
    with pytest.raises(ValueError, match="filter_action must be 'mask' or 'drop'"):
        PipelineArguments(filter_action="keep")
    with pytest.raises(ValueError, match="re-estimates the threshold every round"):
        PipelineArguments(filter_rule="margin")
    with pytest.raises(ValueError, match="filter_quantile must lie in"):
        PipelineArguments(filter_quantile=1.5)
