"""A careless or hostile user's inputs: every bad setting, config file, model name or data file gets one clear line
naming it (exit code 2 for usage errors, 1 for failures), never a traceback. docs/reliability.md lists the cases;
outputs, caches, resuming and locks are in test_reliability_outputs.py."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from datasets import Dataset

from md2pr_st.cli import main
from md2pr_st.data import check_training_rows, load_beir
from test_data import CORPUS, QUERIES, write_beir
from tiny_models import build_tiny_bert


def cli(argv, capsys):
    """``(exit code, stderr)`` of ``md2pr ARGV``, whether it returns or exits; never a traceback."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--false_negative_margin", "nan"], "false_negative_margin must be a finite number, got nan"),
        (["train", "--false_negative_threshold", "inf"], "false_negative_threshold must be a finite number"),
        (["filter", "--margin", "nan"], "margin must be a finite number"),
        (["filter", "--min_margin", "inf"], "min_margin must be a finite number"),
        (["filter", "--max_margin=-inf"], "max_margin must be a finite number"),
        (["filter", "--threshold", "nan"], "threshold must be a finite number"),
        (["filter", "--quantile", "1.5"], "quantile must lie in [0, 1]"),
        (["filter", "--min_margin", "2", "--max_margin", "1"], "min_margin (2.0) must not exceed max_margin (1.0)"),
        (["train", "--epochs", "-1"], "epochs must be > 0 (a number of epochs), got -1"),
        (["teacher", "--epochs", "0"], "epochs must be > 0"),
        (["teacher", "--loss", "hinge"], "Unknown teacher loss 'hinge'; choose one of bce, ranknet, lambda"),
        (["teacher", "--loss", "lambda", "--list_size", "1"], "list_size must be >= 2 for the ranking loss"),
        (["pipeline", "--teacher_loss", "lambdamart"], "Unknown teacher loss 'lambdamart'"),
        (["pipeline", "--epochs_per_round", "-1"], "epochs_per_round must be > 0"),
        (["pipeline", "--rounds", "0"], "rounds must be >= 1"),
        (["eval", "--batch_size", "0"], "batch_size must be >= 1"),
        (["train", "--max_seq_length", "-3"], "max_seq_length must be >= 1"),
        (["mine", "--chunk_size", "0"], "chunk_size must be >= 1"),
        (["mine", "--range_max", "3", "--num_negatives", "4"], "Cannot take 4 candidates from ranks 0..2"),
        (["train", "--learning_rate", "0"], "learning_rate must be > 0"),
        (["train", "--seed", "-1"], "seed must be >= 0"),
        (["train", "--alpha", "-1"], "alpha must be >= 0"),
        (["pipeline", "--scale", "0"], "scale must be > 0"),
        (["train", "--student_temperature", "0"], "student_temperature must be > 0"),
        (
            ["pipeline", "--num_negatives", "4", "--mine_candidates", "2"],
            "mine_candidates (2) must be >= num_negatives",
        ),
    ],
)
def test_bad_numbers_are_usage_errors_before_any_work(argv, message, capsys):
    code, err = cli(argv, capsys)
    assert code == 2 and message in err


@pytest.mark.parametrize(
    "command, name, content, message",
    [
        ("mine", "c.yaml", 'with_ids: "no"\n', "with_ids: expected true or false, got the string 'no'"),
        ("mine", "c.yaml", 'with_ids: "false"\n', "got the string 'false'"),
        ("eval", "c.yaml", 'batch_size: "ten"\n', "batch_size: expected an integer, got the string 'ten'"),
        ("eval", "c.yaml", "model: [unclosed\n", "not valid YAML"),
        ("eval", "c.yaml", "- model: x\n- split: test\n", "expected a mapping of option names to values, got a list"),
        ("pipeline", "c.yaml", "rounds: 0\n", "rounds must be >= 1"),
        ("train", "c.yaml", "epochs: .nan\n", "epochs must be a finite number"),
        ("eval", "c.json", '{"model": "x",}', "c.json:1: not valid JSON"),
        ("eval", "c.json", '{"modle": "typo"}', "modle"),
        ("eval", "c.yaml", b"model: caf\xe9\n", "is not UTF-8"),
    ],
)
def test_bad_config_files_are_usage_errors(command, name, content, message, tmp_path, capsys):
    config = tmp_path / name
    config.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, err = cli([command, str(config)], capsys)
    assert code == 2 and message in err and str(config) in err


def test_a_missing_config_file_is_named(tmp_path, capsys):
    code, err = cli(["eval", str(tmp_path / "nowhere.yaml")], capsys)
    assert code == 2 and "nowhere.yaml: no such config file" in err


def test_devices_this_machine_lacks_are_usage_errors(capsys):
    import torch

    code, err = cli(["eval", "--device", "gpu"], capsys)
    assert code == 2 and "--device gpu: not a torch device" in err
    if not torch.cuda.is_available():
        code, err = cli(["eval", "--device", "cuda"], capsys)
        assert code == 2 and "--device cuda: this torch build" in err and "--device cpu" in err


def test_models_that_cannot_load_are_named_in_one_line(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, err = cli(["eval", "--model", "sentence-transformers/all-MiniLM-L6-v2-typo"], capsys)
    assert code == 2 and "not in the Hugging Face cache while the Hub is offline" in err
    assert len(err.strip().splitlines()) == 1
    code, err = cli(["eval", "--model", str(tmp_path / "missing" / "model")], capsys)
    assert code == 2 and "no such folder" in err
    (tmp_path / "empty").mkdir()
    code, err = cli(["mine", "--model", str(tmp_path / "empty")], capsys)
    assert code == 2 and "holds no model (no config.json or modules.json)" in err


def test_a_teacher_that_is_not_a_cross_encoder_is_refused(tiny_model_path, tmp_path, capsys):
    from md2pr_st.teacher import Teacher

    code, err = cli(["train", "--teacher", str(tiny_model_path)], capsys)
    assert code == 2 and "a SentenceTransformer (bi-encoder) folder, not a cross-encoder" in err
    plain = build_tiny_bert(tmp_path / "plain")  # a BertModel: no classifier head to load
    code, err = cli(["filter", "--teacher", str(plain)], capsys)
    assert code == 2 and "a plain BertModel encoder with no trained classifier head" in err
    with pytest.raises(ValueError, match="not a cross-encoder"):
        Teacher(str(tiny_model_path))
    assert Teacher(str(plain), num_labels=1).score([("a", "b")]).shape == (1,)  # a fresh head on purpose


def beir(tmp_path, corpus_lines=None, qrels_lines=None):
    folder = write_beir(tmp_path / "data", CORPUS, QUERIES, [("q1", "d1", 2), ("q2", "d3", 3)])
    if corpus_lines is not None:
        (folder / "corpus.jsonl").write_bytes(b"".join(corpus_lines))
    if qrels_lines is not None:
        (folder / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\n" + b"".join(qrels_lines))
    return folder


GOOD_DOC = b'{"_id": "d1", "text": "Paris is the capital of France."}\n'
GOOD_DOCS = [GOOD_DOC, b'{"_id": "d3", "text": "Python is a snake."}\n']


@pytest.mark.parametrize(
    "corpus, qrels, message",
    [
        ([GOOD_DOC, b'["d2", "Tea"]\n'], None, "corpus.jsonl:2: each line must be a JSON object"),
        ([GOOD_DOC, b"5\n"], None, "corpus.jsonl:2: each line must be a JSON object"),
        ([GOOD_DOC, b'{"_id": "d3", "text": 42}\n'], None, "corpus.jsonl:2: 'text' must be a string, got int 42"),
        ([GOOD_DOC, b'{"_id": "d3", "title": 7, "text": "x"}\n'], None, "corpus.jsonl:2: 'title' must be a string"),
        ([GOOD_DOC, b'{"_id": "d3", "text": "caf\xe9"}\n'], None, "corpus.jsonl:2: byte 0xe9 at column"),
        (GOOD_DOCS, [b"q1\td1\t2\n", b"q2\td3\t100000000000000000000\n"], "test.tsv:3: the grade 1000"),
        (GOOD_DOCS, [b"q1\td1\t2\n", b"q2\td3\t\xff\n"], "test.tsv:3: byte 0xff"),
        (GOOD_DOCS, [b"q1\td1\t2\n", b"q2\td3\t3\n", b"q1\td1\t0\n"], "(q1, d1) is graded 0 here but 2 at line 2"),
    ],
)
def test_bad_data_files_name_the_file_and_line(corpus, qrels, message, tmp_path, capsys):
    folder = beir(tmp_path, corpus, qrels)
    with pytest.raises(ValueError) as exc:
        load_beir(folder, "test")
    assert message in str(exc.value)
    code, err = cli(["eval", "--dataset", str(folder)], capsys)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_duplicate_qrels_lines_are_reported_and_counted_once(tmp_path, caplog):
    folder = beir(tmp_path, GOOD_DOCS, [b"q1\td1\t2\n", b"q2\td3\t3\n", b"q1\td1\t2\n"])
    with caplog.at_level(logging.WARNING, logger="md2pr_st"):
        data = load_beir(folder, "test")
    assert data.qrels == {"q1": {"d1": 2}, "q2": {"d3": 3}}
    assert "1 duplicate lines (same query, document and grade), e.g. line 4" in caplog.text


def test_grades_beyond_trec_evals_integers_are_refused_in_memory_too():
    from md2pr_st.data import RetrievalData

    corpus = Dataset.from_dict({"id": ["d"], "text": ["a passage"]})
    queries = Dataset.from_dict({"id": ["q"], "text": ["a query"]})
    with pytest.raises(ValueError, match="qrels grades are not integers in"):
        RetrievalData(corpus, queries, {"q": {"d": 10**20}})
    with pytest.raises(ValueError, match="'q', document 'd': True"):
        RetrievalData(corpus, queries, {"q": {"d": True}})


def test_swapped_or_reordered_columns(caplog):
    rows = Dataset.from_dict(
        {
            "scores": [[1.0, 0.0]],
            "negative_1": ["Tea is a drink made from leaves."],
            "positive": ["paris"],  # swapped: the passage is in the query column
            "query": ["Paris is the capital and largest city of France."],
        }
    )
    with caplog.at_level(logging.WARNING, logger="md2pr_st"):
        ready = check_training_rows(rows)
    assert ready.column_names == ["query", "positive", "negative_1", "scores"]  # the order the loss reads
    assert "are the columns swapped?" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="md2pr_st"):
        check_training_rows(Dataset.from_dict({"query": ["paris"], "positive": ["Paris is the capital of France."]}))
    assert "swapped" not in caplog.text


def test_training_on_an_empty_filtered_dataset_gives_the_counts(tmp_path, capsys):
    Dataset.from_dict({"query": [], "positive": [], "negative_1": []}).save_to_disk(str(tmp_path / "filtered"))
    stats = {"rounds": [{"round": 1, "rule": "absolute", "flagged": 8, "candidates_scored": 8, "dropped_rows": 4}]}
    (tmp_path / "filtered" / "md2pr_filter.json").write_text(json.dumps(stats))
    argv = ["train", "--input", str(tmp_path / "filtered"), "--output_dir", str(tmp_path / "student"), "--beta", "0"]
    code, err = cli(argv, capsys)
    assert code == 1 and "has 0 rows: nothing to train on" in err
    assert "flagged 8 of 8 candidates and dropped 4 rows (rule absolute)" in err


def test_filtering_that_leaves_no_row_writes_nothing(tmp_path, capsys):
    rows = Dataset.from_dict(
        {
            "query": ["q1", "q2"],
            "positive": ["p1", "p2"],
            "negative_1": ["a", "b"],
            "negative_2": ["c", "d"],
            "scores": [[1.0, 5.0, 5.0], [1.0, 5.0, 5.0]],
        }
    )
    rows.save_to_disk(str(tmp_path / "mined"))
    argv = ["filter", "--input", str(tmp_path / "mined"), "--output", str(tmp_path / "filtered")]
    code, err = cli(
        argv + ["--rule", "absolute", "--threshold", "0", "--num_negatives", "1", "--action", "drop"], capsys
    )
    assert code == 1 and "No row is left after filtering 2 rows: 4 of 4 candidates flagged, 2 rows dropped" in err
    assert not (tmp_path / "filtered").exists()


def test_verbose_prints_the_traceback(tmp_path, capsys):
    folder = beir(tmp_path, [GOOD_DOC, b"5\n"])
    assert main(["-v", "eval", "--dataset", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "corpus.jsonl:2" in err
    assert main(["eval", "--dataset", str(folder), "--verbose"]) == 1  # -v after the command works too
    assert "Traceback" in capsys.readouterr().err


def test_push_refuses_a_symlink_out_of_the_model_folder(tiny_model_path, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_path, folder)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the Hub")
    (folder / "notes.txt").symlink_to(secret)
    code, err = cli(["push", str(folder), "--repo_id", "me/model", "--dry_run"], capsys)
    assert code == 1 and "is a symlink to" in err and "outside" in err


@pytest.mark.parametrize("option", ["margin", "min_margin", "max_margin", "threshold", "quantile"])
def test_the_filter_refuses_non_finite_settings_from_python_too(option):
    from md2pr_st.false_negatives import FalseNegativeFilter

    rule = {"margin": "margin", "threshold": "absolute"}.get(option, "dynamic")
    with pytest.raises(ValueError, match=f"{option} must be a finite number, got nan"):
        FalseNegativeFilter(rule=rule, **{"margin": 1.0, "threshold": 1.0, option: float("nan")})


def test_a_training_that_ran_no_step_saves_nothing(tiny_model_path, tmp_path, monkeypatch):
    """When the trainer runs no step (a batch sampler that forms no batch), train_student raises and writes no model."""
    from datasets import Dataset
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer

    from md2pr_st.config import LossArguments
    from md2pr_st.student import train_student

    monkeypatch.setattr(SentenceTransformerTrainer, "train", lambda self, **kwargs: None)  # as if no batch formed
    rows = Dataset.from_dict({"query": ["a cat", "a dog"], "positive": ["cat", "dog"], "negative_1": ["sea", "tea"]})
    with pytest.raises(ValueError, match=r"Training ran 0 steps on 2 rows at 2 rows per device x 1 processes"):
        train_student(str(tiny_model_path), rows, tmp_path / "student", LossArguments(), batch_size=2, device="cpu")
    assert not (tmp_path / "student" / "model.safetensors").exists()
