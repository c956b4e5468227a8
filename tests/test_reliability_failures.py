"""Inputs that cannot be right, and failures a user causes or meets, each in one line (never a traceback unless
-v): a model folder without its tokenizer, pickle-only or corrupt weights, a config file with a key twice, a mining
input whose positives are not in the corpus, a full disk at any stage, Ctrl-C at any moment, a renamed scores column,
a truncated Arrow file, a config file of another command. docs/reliability.md lists the cases."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from test_reliability import cli
from test_reliability_outputs import training_rows

from md2pr_st.cli import main, user_message
from md2pr_st.models import check_model_folder
from test_data import CORPUS, QUERIES, write_beir

PUSH_WORDS = ("holds pickle-based files ['pytorch_model.bin']; only safetensors weights are", "(pickles can run code")


@pytest.fixture(scope="module")
def broken_models(tiny_model_path, tiny_cross_encoder_path, tmp_path_factory):
    """Copies of the tiny student and teacher with pickle-only, torch.save and truncated weights, and without their
    tokenizer files."""
    import torch
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("broken")
    models = {}
    for name, source in (("student", tiny_model_path), ("teacher", tiny_cross_encoder_path)):
        pickled = shutil.copytree(source, root / f"{name}_pickle")
        torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
        (pickled / "model.safetensors").unlink()
        models[f"{name}_pickle"] = pickled
    saved = shutil.copytree(tiny_model_path, root / "torch_save")
    torch.save(torch.nn.Linear(2, 2), saved / "model.pt")
    (saved / "model.safetensors").unlink()
    models["torch_save"] = saved
    truncated = shutil.copytree(tiny_model_path, root / "truncated")
    size = (truncated / "model.safetensors").stat().st_size
    os.truncate(truncated / "model.safetensors", size // 2)
    models["truncated"] = truncated
    no_tokenizer = shutil.copytree(tiny_model_path, root / "no_tokenizer")
    for file in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (no_tokenizer / file).unlink(missing_ok=True)
    models["no_tokenizer"] = no_tokenizer
    return models


@pytest.mark.parametrize(
    "command, model",
    [
        (["eval", "--model"], "student_pickle"),
        (["mine", "--model"], "student_pickle"),
        (["train", "--model"], "student_pickle"),
        (["filter", "--teacher"], "teacher_pickle"),
        (["teacher", "--base_model"], "teacher_pickle"),
        (["pipeline", "--teacher"], "teacher_pickle"),
        (["eval", "--model"], "torch_save"),
    ],
)
def test_pickle_weights_are_refused_in_one_line_with_pushs_wording(command, model, broken_models, capsys):
    code, err = cli([*command, str(broken_models[model])], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    pickle_file = "model.pt" if model == "torch_save" else "pytorch_model.bin"
    assert f"holds pickle-based files ['{pickle_file}']; only safetensors weights are loaded" in err
    assert "Re-save the model with `SentenceTransformer(path).save(path)`" in err


def test_push_and_load_refuse_pickles_in_the_same_words(broken_models):
    from md2pr_st.hub.model_folder import validate_model_folder

    with pytest.raises(ValueError) as pushed:
        validate_model_folder(broken_models["student_pickle"])
    with pytest.raises(ValueError) as loaded:
        check_model_folder(broken_models["student_pickle"])
    for text in (pushed, loaded):
        assert all(words in str(text.value) for words in PUSH_WORDS)


def test_a_truncated_safetensors_file_is_named(broken_models, capsys):
    code, err = cli(["eval", "--model", str(broken_models["truncated"])], capsys)
    assert code == 2 and "model.safetensors is truncated or corrupt (it holds" in err and "Copy or save" in err


def test_weights_a_loader_cannot_read_are_one_line_wherever_they_are_met():
    from safetensors import SafetensorError

    message = user_message(SafetensorError("Error while deserializing header: incomplete metadata"))
    assert message.startswith("A model's safetensors weights could not be read (Error while deserializing")
    import pickle

    assert "Only whole safetensors weights are loaded" in user_message(pickle.UnpicklingError("Weights only load"))
    assert user_message(AssertionError("a bug")) is None  # md2pr's own bugs keep their traceback


def test_a_model_folder_without_its_tokenizer_is_refused(broken_models, capsys):
    code, err = cli(["eval", "--model", str(broken_models["no_tokenizer"])], capsys)
    assert code == 2 and "has no tokenizer files (tokenizer.json, vocab.txt, ...), so every word" in err
    assert "Copy the tokenizer files" in err


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("c.yaml", "epochs: 1\nbatch_size: 2\nepochs: 2\n", "c.yaml: line 3: the key 'epochs' is given twice"),
        ("c.json", '{"epochs": 1, "epochs": 2}', "c.json: the key 'epochs' is given twice"),
        (
            "c.yaml",
            "output: runs/x\n",
            "c.yaml: 'output' is not an option of md2pr train (did you mean 'output_dir'?)",
        ),
    ],
)
def test_config_files_with_a_key_twice_or_another_commands_key_are_refused(name, content, message, tmp_path, capsys):
    config = tmp_path / name
    config.write_text(content)
    code, err = cli(["train", str(config)], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    if "output:" in content:
        code, err = cli(["teacher", str(config)], capsys)
        assert code == 2 and "not an option of md2pr teacher (did you mean 'output_dir'?)" in err


def test_a_mining_input_whose_positives_are_not_in_the_corpus(tiny_model, caplog):
    from md2pr_st.mining import mine_hard_negatives

    corpus = Dataset.from_dict({"id": [f"d{i}" for i in range(6)], "text": [f"tea passage {i}" for i in range(6)]})
    rows = Dataset.from_dict({"query": ["q one", "q two"], "positive": ["tea passage 0", "not in the corpus"]})
    with caplog.at_level(logging.WARNING, logger="md2pr_st"):
        _, stats = mine_hard_negatives(rows, corpus, tiny_model, num_negatives=2, return_stats=True)
    assert stats.positives_not_in_corpus == 1 and "1 of 2 positives of the mining input are not in the corpus" in (
        caplog.text
    )
    elsewhere = Dataset.from_dict({"query": ["q one"], "positive": ["a passage of another collection"]})
    with pytest.raises(ValueError, match="None of the 1 positives of the mining input is in the corpus"):
        mine_hard_negatives(elsewhere, corpus, tiny_model, num_negatives=2)


def test_a_full_disk_while_mining_names_the_file_and_the_space(tiny_model_path, tmp_path, capsys, monkeypatch):
    folder = write_beir(tmp_path / "toy", CORPUS, QUERIES, [("q1", "d1", 2), ("q2", "d3", 3)], "train")

    def full_disk(file, array, **kwargs):  # what numpy says when a write stops short
        file.write(b"\x93NUMPY")
        raise OSError(f"{array.nbytes} requested and 6 written")

    monkeypatch.setattr(np, "save", full_disk)
    argv = ["mine", "--input", str(folder), "--output", str(tmp_path / "mined"), "--model", str(tiny_model_path)]
    code, err = cli([*argv, "--num_negatives", "1", "--range_max", "1", "--device", "cpu"], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("md2pr mine: error: The disk is full: writing ") and "chunk_00000.npy" in last
    assert "needed at least" in last and "free" in last and "requested and" not in last
    assert not (tmp_path / "mined").exists()


def test_a_full_disk_while_a_checkpoint_is_saved_names_the_folder(tiny_model_path, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer

    def full_disk(self, *args, **kwargs):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })'
        )

    monkeypatch.setattr(SentenceTransformerTrainer, "_save_checkpoint", full_disk)
    argv = ["train", "--input", str(training_rows(tmp_path / "rows")), "--output_dir", str(tmp_path / "s")]
    argv += [
        "--model",
        str(tiny_model_path),
        "--beta",
        "0",
        "--device",
        "cpu",
        "--batch_size",
        "2",
        "--save_steps",
        "1",
    ]
    code, err = cli(argv, capsys)
    last = err.strip().splitlines()[-1]
    assert code == 1 and f"The disk is full: writing {tmp_path / 's.checkpoints'} needed about" in last
    assert not (tmp_path / "s").exists()


def test_ctrl_c_while_the_command_starts_exits_130_in_one_line(tmp_path):
    script = textwrap.dedent(
        """
        import os, signal, sys
        sys.argv[0] = os.path.join(os.path.dirname(sys.executable), "md2pr")  # as the md2pr script starts
        import md2pr_st
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the command line is being imported
        import md2pr_st.cli
        print("not reached")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 130 and "not reached" not in proc.stdout
    assert proc.stderr.strip() == "md2pr: interrupted while starting; nothing was done."
    library = subprocess.run(  # a program that imports the library keeps Python's own Ctrl-C
        [sys.executable, "-c", "import signal, md2pr_st; print(signal.getsignal(signal.SIGINT).__name__)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert library.stdout.strip() == "default_int_handler"


def test_ctrl_c_while_options_are_parsed_or_work_runs_exits_130(capsys, monkeypatch):
    import md2pr_st.cli as cli_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "_parse", interrupted)  # e.g. while transformers is imported
    assert main(["train", "--epochs", "1"]) == 130
    assert capsys.readouterr().err.strip() == "md2pr: interrupted before any work; nothing was done."
    monkeypatch.undo()
    monkeypatch.setattr(cli_module, "driver", lambda name: interrupted)
    assert main(["eval", "--batch_size", "2"]) == 130
    assert capsys.readouterr().err.strip() == "md2pr eval: interrupted; run the same command again to resume."
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_renamed_scores_column_is_named(tiny_model_path, tmp_path, capsys):
    rows = Dataset.load_from_disk(str(training_rows(tmp_path / "rows"))).rename_column("scores", "teacher_scores")
    rows.save_to_disk(str(tmp_path / "renamed"))
    argv = ["train", "--input", str(tmp_path / "renamed"), "--output_dir", str(tmp_path / "s"), "--beta", "0"]
    code, err = cli([*argv, "--model", str(tiny_model_path), "--device", "cpu"], capsys)
    assert code == 1 and "column 'teacher_scores' (the teacher's scores?) holds lists of float64, not texts" in err
    assert "Name the scores column 'scores'" in err and "Unsupported input type" not in err


def test_a_truncated_arrow_file_is_named(tiny_model_path, tmp_path, capsys):
    rows = training_rows(tmp_path / "rows")
    capsys.readouterr()  # the progress of saving the rows
    arrow = next(rows.glob("*.arrow"))
    os.truncate(arrow, arrow.stat().st_size // 2)
    argv = ["train", "--input", str(rows), "--output_dir", str(tmp_path / "s"), "--beta", "0"]
    code, err = cli(argv, capsys)
    assert code == 1 and f"--input {rows}: its data ({arrow.name}) is truncated or corrupt" in err
    assert "Write the folder again" in err and len(err.strip().splitlines()) == 1
    assert main(["-v", *argv]) == 1
    assert "Traceback" in capsys.readouterr().err  # -v still shows where it came from


def test_check_model_folder_accepts_the_shipped_model(minilm_path):
    check_model_folder(Path(minilm_path))
