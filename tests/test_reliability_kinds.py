"""Outputs know what they are: each md2pr output's marker records its kind and the command that made it, a command
never replaces another kind of md2pr output or one of its own inputs without --overwrite (its input itself not even
then), and folders written before kinds existed keep working for the command that made them.
docs/reliability.md lists the cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_reliability import cli
from test_reliability_outputs import training_rows

from md2pr_st.outputs import (
    OUTPUT_MARKER,
    OutputExistsError,
    check_inputs,
    check_output,
    mark_output,
    output_kind,
    prepare_output_dir,
)
from md2pr_st.stage import save_dataset
from md2pr_st.utils import atomic_path


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its contents: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def made(folder: Path, kind: str, command: str, files: tuple[str, ...] = ("data.txt",)) -> Path:
    """A folder as the md2pr command ``command`` leaves its ``kind`` of output."""
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"{name} of {command}")
    (folder / OUTPUT_MARKER).write_text(json.dumps({"written_by": "md2pr-st", "kind": kind, "made_by": command}))
    return folder


def test_markers_record_the_kind_and_the_command(tmp_path):
    from md2pr_st.outputs import command

    with command("md2pr mine"):
        with atomic_path(tmp_path / "mined", is_dir=True, kind="mined") as tmp:
            (tmp / "rows.arrow").write_text("rows")
    marker = json.loads((tmp_path / "mined" / OUTPUT_MARKER).read_text())
    assert marker == {"written_by": "md2pr-st", "kind": "mined", "made_by": "md2pr mine"}
    assert output_kind(tmp_path / "mined") == "mined"
    with pytest.raises(OutputExistsError, match=r"holds a mined training set \(made by md2pr mine\); writing a "):
        with atomic_path(tmp_path / "mined", is_dir=True, kind="filtered"):
            pass
    with atomic_path(tmp_path / "mined", is_dir=True, kind="filtered", overwrite=True) as tmp:
        (tmp / "rows.arrow").write_text("filtered")
    assert output_kind(tmp_path / "mined") == "filtered"


@pytest.mark.parametrize(
    "files, kind",
    [
        (("md2pr_mining.json",), "mined"),
        (("md2pr_filter.json",), "filtered"),
        (("md2pr_teacher.json",), "teacher"),
        (("run_info.json", "metrics.json"), "pipeline"),
        (("md2pr_index.json",), "index"),
        (("md2pr_resume.json",), "checkpoints"),
    ],
)
def test_folders_written_before_kinds_existed_are_told_by_their_manifests(files, kind, tmp_path):
    folder = tmp_path / "legacy"
    folder.mkdir()
    for name in files:
        (folder / name).write_text("{}")
    assert output_kind(folder) == kind
    mark_output(folder, "run")  # a marker of before kinds: the manifests still tell
    assert output_kind(folder) == kind
    check_output(folder, kind=kind)  # the command that made it still writes there (a rerun, a resume)
    other = "student" if kind != "student" else "mined"
    with pytest.raises(OutputExistsError, match="would replace it"):
        check_output(folder, kind=other)


def test_a_folder_whose_kind_cannot_be_told_is_taken_as_any_kind(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "weights.bin").write_text("x")
    (folder / OUTPUT_MARKER).write_text('{"written_by": "md2pr-st"}')  # a marker of before kinds, nothing else
    assert output_kind(folder) is None
    check_output(folder, kind="student")
    prepare_output_dir(folder, kind="pipeline")  # the same command adopting it records its kind
    assert output_kind(folder) == "pipeline"


def test_filter_in_place_of_its_input_is_refused_even_with_overwrite(tmp_path, capsys):
    mined = tmp_path / "mined"
    save_dataset(_rows(), mined, kind="mined")
    before = files_of(mined)
    capsys.readouterr()  # the progress of saving the rows
    for extra in ([], ["--overwrite"]):
        code, err = cli(["filter", "--input", str(mined), "--output", str(mined), *extra], capsys)
        assert code == 2 and f"--output {mined} is the input --input {mined}: it would be destroyed" in err
        assert len(err.strip().splitlines()) == 1
    assert files_of(mined) == before


def test_train_into_its_own_training_data_is_refused(tmp_path, capsys):
    rows = training_rows(tmp_path / "filtered")
    before = files_of(rows)
    code, err = cli(["train", "--input", str(rows), "--output_dir", str(rows), "--beta", "0"], capsys)
    assert code == 2 and "is the input --input" in err
    assert files_of(rows) == before and not (tmp_path / "filtered.checkpoints").exists()


def test_train_into_a_finished_pipeline_run_is_refused(tmp_path, capsys):
    files = ("run_info.json", "metrics.json", "rounds.png", "before/stage.json", "round_1/stage.json")
    run = made(tmp_path / "pipe", "pipeline", "md2pr pipeline", files)
    before = files_of(run)
    argv = ["train", "--input", str(training_rows(tmp_path / "rows")), "--output_dir", str(run), "--beta", "0"]
    code, err = cli(argv, capsys)
    assert code == 2 and f"--output_dir {run} holds a pipeline run (made by md2pr pipeline)" in err
    assert "writing a student model there would replace it" in err and "--overwrite" in err
    assert files_of(run) == before


def test_mine_into_a_student_is_refused(tmp_path, tiny_model_path, capsys):
    student = made(tmp_path / "student", "student", "md2pr train", ("model.safetensors", "modules.json"))
    before = files_of(student)
    code, err = cli(["mine", "--output", str(student), "--model", str(tiny_model_path)], capsys)
    assert code == 2 and "holds a student model (made by md2pr train); writing a mined training set" in err
    assert files_of(student) == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--output", "{other}/stats.json"], "holds false-negative filter statistics; writing evaluation"),
        (["eval", "--index_dir", "{other}/mined"], "holds a mined training set"),
        (["teacher", "--output_dir", "{other}/mined"], "writing a teacher cross-encoder there would replace it"),
        (["pipeline", "--output_dir", "{other}/student"], "holds a student model"),
        (["filter", "--input", "{other}/mined", "--output", "{other}/teacher"], "holds a teacher cross-encoder"),
        (["filter", "--input", "{other}/mined", "--statistics", "{other}/results.json"], "holds evaluation results"),
        (["mine", "--cache_dir", "{other}/student"], "writing a corpus-embedding cache there"),
    ],
)
def test_every_output_option_refuses_another_kind(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default outputs (mined, filtered) land here
    other = tmp_path / "other"
    for kind, command in (("mined", "md2pr mine"), ("student", "md2pr train"), ("teacher", "md2pr teacher")):
        made(other / kind, kind, command)
    (other / "stats.json").write_text(json.dumps({"rounds": []}))
    (other / "results.json").write_text(json.dumps({"n_queries": 1, "dataset": "d", "model": "m"}))
    before = files_of(other)
    code, err = cli([a.format(other=other) for a in argv], capsys)
    assert code == 2 and message in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert files_of(other) == before


def test_an_output_that_holds_or_lies_inside_an_input_needs_overwrite(tmp_path, tiny_model_path, capsys):
    data = tmp_path / "project" / "data"
    rows = training_rows(data)
    argv = ["train", "--input", str(rows), "--beta", "0", "--model", str(tiny_model_path), "--device", "cpu"]
    code, err = cli([*argv, "--output_dir", str(rows / "student")], capsys)
    assert code == 2 and "lies inside the input --input" in err and "--overwrite" in err
    (tmp_path / "project" / OUTPUT_MARKER).write_text('{"written_by": "md2pr-st", "kind": "student"}')
    code, err = cli([*argv, "--output_dir", str(tmp_path / "project")], capsys)
    assert code == 2 and "holds the input --input" in err and "replacing it would delete that input" in err
    with pytest.raises(OutputExistsError, match="lies inside the input model"):
        check_inputs(tiny_model_path / "sub", {"model": tiny_model_path})
    check_inputs(tiny_model_path / "sub", {"model": tiny_model_path}, overwrite=True)  # as asked
    check_inputs(tmp_path / "x", {"model": "org/hub-id", "corpus": None})  # not local paths: nothing to compare


def test_the_same_command_still_replaces_and_resumes_its_own_output(tmp_path, tiny_model_path, capsys):
    rows = training_rows(tmp_path / "rows")
    out = tmp_path / "student"
    argv = ["train", "--input", str(rows), "--output_dir", str(out), "--beta", "0", "--model", str(tiny_model_path)]
    argv += ["--device", "cpu", "--batch_size", "2", "--max_steps", "1"]
    assert cli(argv, capsys)[0] == 0
    marker = json.loads((out / OUTPUT_MARKER).read_text())
    assert marker["kind"] == "student" and marker["made_by"] == "md2pr train"
    (out / OUTPUT_MARKER).write_text('{"written_by": "md2pr-st", "kind": "output"}')  # as before kinds existed
    assert cli(argv, capsys)[0] == 0 and output_kind(out) == "student"


def _rows():
    from datasets import Dataset

    return Dataset.from_dict(
        {"query": ["a cat", "a dog"], "positive": ["cat", "dog"], "negative_1": ["sea", "tea"], "scores": [[1, 0]] * 2}
    )
