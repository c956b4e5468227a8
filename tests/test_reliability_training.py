"""Nothing non-finite is saved or accepted: every numeric option (md2pr's, and the host trainer's that md2pr passes
on) is checked before any work, training stops at the first step whose loss or gradients are not finite, and a
model with a weight that is not finite is never saved. docs/reliability.md lists the cases."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from test_reliability import cli
from test_reliability_outputs import training_rows

from md2pr_st.config import LossArguments
from md2pr_st.training import NonFiniteTrainingError, check_finite_weights, training_arguments
from md2pr_st.validation import check_grade, check_trainer_options


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--weight_decay", "inf"], "weight_decay must be a finite number, got inf"),
        (["train", "--weight_decay", "-0.1"], "weight_decay must be >= 0"),
        (["train", "--warmup_ratio", "nan"], "warmup_ratio must be a finite number, got nan"),
        (["train", "--warmup_ratio", "1.5"], "warmup_ratio must lie in [0, 1]"),
        (["train", "--warmup_steps=-3"], "warmup_steps must be >= 0"),
        (["train", "--gradient_accumulation_steps", "0"], "gradient_accumulation_steps must be >= 1"),
        (["train", "--max_steps", "0"], "max_steps must be -1 (train by epochs) or >= 1"),
        (["train", "--max_grad_norm", "nan"], "max_grad_norm must be a finite number"),
        (["train", "--adam_beta2", "1"], "adam_beta2 must lie in [0, 1)"),
        (["teacher", "--weight_decay", "inf"], "weight_decay must be a finite number"),
        (["pipeline", "--gradient_accumulation_steps", "-2"], "gradient_accumulation_steps must be >= 1"),
        (["demo", "--warmup_ratio=-inf"], "warmup_ratio must be a finite number"),
        (["train", "--learning_rate=-1e-5"], "learning_rate must be > 0"),
        (["train", "--seed", "4294967296"], "seed must be <= 4294967295 (a 32-bit seed)"),
        (["train", "--batch_size", "9223372036854775808"], "batch_size must lie within +-9223372036854775807"),
        (["eval", "--relevance_cut", "-1"], "relevance_cut must be >= 1"),
        (["eval", "--relevance_cut", "0"], "relevance_cut must be >= 1"),
        (["mine", "--min_grade", "-1"], "min_grade must be >= 1"),
        (["pipeline", "--min_grade", "0"], "min_grade must be >= 1"),
        (["teacher", "--list_size", "0"], "list_size must be >= 1"),
        (["filter", "--num_proc", "100000"], "num_proc must be <="),
        (["train", "--learning_rate", ""], "invalid float value: ''"),
        (["filter", "--min_margin", "-inf"], "for a value that starts with '-', write --option=value"),
    ],
)
def test_the_trainers_numbers_and_ours_are_checked_before_any_work(argv, message, capsys):
    code, err = cli(argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_the_host_options_are_checked_from_python_too():
    with pytest.raises(ValueError, match="weight_decay must be a finite number"):
        training_arguments({}, {"weight_decay": math.inf})
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be >= 1"):
        check_trainer_options({"gradient_accumulation_steps": 0})
    check_trainer_options({"max_steps": -1, "bf16": True, "report_to": "none"})  # -1: train by epochs


def test_a_warmup_ratio_is_applied_not_ignored():
    assert training_arguments({"warmup_steps": 0.1}, {"warmup_ratio": 0.25}) == {"warmup_steps": 0.25}
    assert training_arguments({"warmup_steps": 0.1}, {"warmup_ratio": 0.25, "warmup_steps": 7}) == {"warmup_steps": 7}


def test_grades_must_lie_inside_the_datas_grades(tmp_path, tiny_model_path, capsys):
    from test_data import CORPUS, QUERIES, write_beir

    with pytest.raises(ValueError, match=r"min_grade is 4 but the grades of toy go from 0 to 3"):
        check_grade("min_grade", 4, [0, 2, 3], "toy")
    folder = write_beir(tmp_path / "toy", CORPUS, QUERIES, [("q1", "d1", 2), ("q2", "d3", 3)])
    argv = ["eval", "--dataset", str(folder), "--model", str(tiny_model_path), "--relevance_cut", "4"]
    code, err = cli(argv, capsys)
    assert code == 1 and "relevance_cut is 4 but the grades of toy-test go from 2 to 3" in err
    code, err = cli(["mine", "--input", str(folder), "--split", "test", "--min_grade", "5"], capsys)
    assert code == 1 and "min_grade is 5 but the grades of toy-test go from 2 to 3" in err


def _train(tiny_model_path, tmp_path, **kwargs):
    from md2pr_st.student import train_student

    rows = Dataset.load_from_disk(str(training_rows(tmp_path / "rows")))
    kwargs = {"batch_size": 2, "device": "cpu", "epochs": 2, **kwargs}
    return train_student(str(tiny_model_path), rows, tmp_path / "student", LossArguments(beta=0), **kwargs)


def test_training_stops_at_the_first_non_finite_step_and_saves_nothing(tiny_model_path, tmp_path):
    with pytest.raises(NonFiniteTrainingError) as exc:
        _train(tiny_model_path, tmp_path, learning_rate=1e12, training_args={"warmup_steps": 0})
    message = str(exc.value)
    assert "The student training stopped at step 2" in message and "contrastive nan" in message
    assert "the learning rate 1e+12 is far too high" in message and "Nothing was saved" in message
    assert not (tmp_path / "student").exists()


def test_a_teacher_training_stops_at_the_first_non_finite_step(tiny_cross_encoder_path, tmp_path):
    from test_teacher_training import toy_data

    from md2pr_st.teacher import train_teacher

    kwargs = dict(base_model=tiny_cross_encoder_path, max_length=32, batch_size=2, show_progress_bar=False)
    with pytest.raises(NonFiniteTrainingError, match=r"The teacher training stopped at step \d+: the loss \(loss"):
        train_teacher(
            toy_data(), tmp_path / "teacher", learning_rate=1e30, training_args={"warmup_steps": 0}, **kwargs
        )
    assert not (tmp_path / "teacher").exists()


def test_non_finite_scores_are_refused_before_training(tiny_model_path, tmp_path):
    from md2pr_st.data import check_training_rows

    rows = Dataset.from_dict({"query": ["a", "b"], "positive": ["x", "y"], "scores": [[1.0, math.nan], [1.0, 0.0]]})
    with pytest.raises(ValueError, match="column 'scores' holds 1 values that are NaN, infinite or missing"):
        check_training_rows(rows)


def test_a_model_with_a_weight_that_is_not_finite_is_never_saved(tiny_model_path, tmp_path, monkeypatch):
    """Whatever made it so (a loss that stayed finite, an optimizer's own step), the save refuses the model."""
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer

    def poisoned(self, **kwargs):
        self.state.global_step = 1
        with torch.no_grad():
            next(self.model.parameters()).fill_(math.inf)

    monkeypatch.setattr(SentenceTransformerTrainer, "train", poisoned)
    with pytest.raises(NonFiniteTrainingError, match=r"weights that are not finite numbers \(0\.model\.embeddings"):
        _train(tiny_model_path, tmp_path)
    assert not (tmp_path / "student").exists()
    layer = torch.nn.Linear(2, 1)
    check_finite_weights(layer)
    layer.weight.data[0, 0] = math.nan
    with pytest.raises(NonFiniteTrainingError, match=r"weight: 1 of 2 values"):
        check_finite_weights(layer)


def test_the_cli_says_the_step_and_the_cause_in_one_line(tiny_model_path, tmp_path, capsys):
    argv = ["train", "--input", str(training_rows(tmp_path / "rows")), "--output_dir", str(tmp_path / "s")]
    argv += ["--model", str(tiny_model_path), "--beta", "0", "--device", "cpu", "--batch_size", "2", "--epochs", "2"]
    code, err = cli([*argv, "--learning_rate", "1e12", "--warmup_steps", "0"], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("md2pr train: error: The student training stopped at step 2")
    assert not (tmp_path / "s").exists()
