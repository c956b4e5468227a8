"""Never lose a user's files, never serve a stale result: outputs that refuse to replace what md2pr did not write,
umask-honouring permissions, write checks before work, one writer per output, and content-keyed indexes, embedding
caches, checkpoints and teachers. docs/reliability.md lists the cases."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from test_reliability import cli

from md2pr_st.outputs import OUTPUT_MARKER, OutputExistsError, OutputLockedError, output_lock
from md2pr_st.utils import atomic_path, write_json
from test_data import CORPUS, QUERIES, write_beir


def user_folder(path: Path) -> Path:
    """A folder holding a user's own work."""
    (path / "src").mkdir(parents=True)
    (path / "src" / "main.py").write_text("print('my work')\n")
    return path


def training_rows(folder: Path) -> Path:
    rows = Dataset.from_dict(
        {
            "query": ["what is the cat", "what is the dog", "what is the tea", "what is the sea"],
            "positive": ["the cat is a cat", "the dog is a dog", "the tea is a tea", "the sea is a sea"],
            "negative_1": ["the dog is not", "the tea is not", "the sea is not", "the cat is not"],
            "scores": [[3.0, -1.0], [2.0, 0.0], [1.5, -0.5], [2.5, 1.0]],
        }
    )
    rows.save_to_disk(str(folder))
    return folder


def test_mine_into_a_folder_holding_other_runs_is_refused(tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "other_run").mkdir(parents=True)
    (runs / "other_run" / "metrics.json").write_text("{}")
    code, err = cli(["mine", "--output", str(runs)], capsys)
    assert code == 2 and "exists and holds files md2pr did not write (other_run)" in err and "--overwrite" in err
    assert (runs / "other_run" / "metrics.json").read_text() == "{}"


def test_train_into_a_project_folder_is_refused(tmp_path, capsys):
    project = user_folder(tmp_path / "project")
    argv = ["train", "--input", str(training_rows(tmp_path / "rows")), "--output_dir", str(project), "--beta", "0"]
    code, err = cli(argv, capsys)
    assert code == 2 and f"--output_dir {project} exists and holds files md2pr did not write (src)" in err
    assert (project / "src" / "main.py").read_text() == "print('my work')\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project", "rows"]  # no checkpoints, no .old


def test_an_existing_file_as_output_folder_is_refused(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    code, err = cli(["mine", "--output", str(notes)], capsys)
    assert code == 2 and "is a file, not a folder" in err
    assert notes.read_text() == "my notes" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    with pytest.raises(OutputExistsError, match="is a file, not a folder"):
        with atomic_path(notes, is_dir=True):
            pass
    with pytest.raises(OutputExistsError, match="is a folder"):
        with atomic_path(tmp_path, is_dir=False):
            pass


def test_folders_md2pr_wrote_carry_a_marker_and_are_replaced(tmp_path):
    target = tmp_path / "out"
    for text in ("first", "second"):
        with atomic_path(target, is_dir=True) as tmp:
            (tmp / "data.txt").write_text(text)
    assert (target / "data.txt").read_text() == "second" and (target / OUTPUT_MARKER).is_file()
    legacy = tmp_path / "legacy"  # written before markers existed: recognised by md2pr's own manifest file
    legacy.mkdir()
    (legacy / "md2pr_mining.json").write_text("{}")
    with atomic_path(legacy, is_dir=True) as tmp:
        (tmp / "data.txt").write_text("new")
    assert (legacy / "data.txt").is_file()
    project = user_folder(tmp_path / "project")
    with atomic_path(project, is_dir=True, overwrite=True) as tmp:  # what --overwrite does
        (tmp / "data.txt").write_text("asked for")
    assert not (project / "src").exists()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_honour_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "folder", is_dir=True) as tmp:
            (tmp / "a.txt").write_text("x")
        write_json(tmp_path / "file.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "file.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "folder" / OUTPUT_MARKER).stat().st_mode) == 0o666 & ~umask


def read_only_dir(tmp_path: Path) -> Path:
    """A folder this process cannot write into (root ignores permissions: then a read-only system folder)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys"), Path("/proc")):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(probe)
    pytest.skip("no read-only folder on this machine")


def test_a_read_only_output_fails_before_any_work(tmp_path, capsys):
    read_only = read_only_dir(tmp_path)
    # The dataset does not exist: had eval loaded it first, it would fail on that.
    argv = ["eval", "--dataset", str(tmp_path / "no_such_data"), "--output", str(read_only / "results.json")]
    code, err = cli(argv, capsys)
    assert code == 1 and f"--output {read_only / 'results.json'}: cannot write in {read_only}" in err
    code, err = cli(["mine", "--output", str(read_only / "mined" / "x")], capsys)
    assert code == 1 and "cannot write in" in err
    (tmp_path / "file").write_text("")
    argv = ["train", "--input", str(training_rows(tmp_path / "rows")), "--beta", "0"]
    code, err = cli(argv + ["--output_dir", str(tmp_path / "file" / "x")], capsys)
    assert code == 2 and "is a file, so nothing can be created below it" in err


def test_eval_replaces_its_own_results_but_not_a_users_file(tiny_model_path, tmp_path, capsys):
    folder = write_beir(tmp_path / "toy", CORPUS, QUERIES, [("q1", "d1", 2), ("q2", "d3", 3)])
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    argv = ["eval", "--model", str(tiny_model_path), "--dataset", str(folder), "--device", "cpu"]
    code, err = cli(argv + ["--output", str(notes)], capsys)
    assert code == 2 and "exists and holds a file md2pr did not write" in err
    assert notes.read_text() == '{"mine": true}'
    results = tmp_path / "results.json"
    assert cli(argv + ["--output", str(results)], capsys)[0] == 0
    assert cli(argv + ["--output", str(results)], capsys)[0] == 0  # its own results: replaced
    assert cli(argv + ["--output", str(notes), "--overwrite"], capsys)[0] == 0
    assert json.loads(notes.read_text())["n_queries"] == 2


def test_index_built_with_another_factory_is_rebuilt(tiny_model, tiny_model_path, tmp_path, capsys):
    from md2pr_st.index import FaissIndex, IndexMismatchError

    corpus = Dataset.from_dict({"id": [f"d{i}" for i in range(40)], "text": [f"passage {i} tea" for i in range(40)]})
    FaissIndex.from_model(tiny_model, corpus, "IVF2,Flat").save(tmp_path / "index")
    with pytest.raises(IndexMismatchError, match="built with the factory 'IVF2,Flat', not 'Flat'"):
        FaissIndex.load(tmp_path / "index", model=tiny_model, corpus=corpus, factory="Flat")
    folder = write_beir(tmp_path / "toy", CORPUS, QUERIES, [("q1", "d1", 2), ("q2", "d3", 3)])
    argv = ["eval", "--model", str(tiny_model_path), "--dataset", str(folder), "--index_dir", str(tmp_path / "idx")]
    assert cli(argv + ["--index_factory", "HNSW32"], capsys)[0] == 0
    code, err = cli(argv + ["--index_factory", "Flat", "--output", str(tmp_path / "r.json")], capsys)
    assert code == 0 and "built with the factory 'HNSW32', not 'Flat'" in err
    assert json.loads((tmp_path / "idx" / "md2pr_index.json").read_text())["factory"] == "Flat"
    assert json.loads((tmp_path / "r.json").read_text())["index_factory"] == "Flat"


def test_an_embedding_chunk_changed_on_disk_is_recomputed(tiny_model, tmp_path, caplog):
    from md2pr_st.index import CorpusEmbeddingCache

    corpus = Dataset.from_dict({"id": [f"d{i}" for i in range(6)], "text": [f"passage {i}" for i in range(6)]})
    first = CorpusEmbeddingCache(tiny_model, corpus, tmp_path, chunk_size=4).compute()
    chunk = next(tmp_path.glob("*/chunk_00000.npy"))
    np.save(chunk, np.zeros((4, first.shape[1]), dtype=np.float32))  # same shape and dtype, other values
    cache = CorpusEmbeddingCache(tiny_model, corpus, tmp_path, chunk_size=4)
    with caplog.at_level(logging.WARNING, logger="md2pr_st"):
        assert cache.finished_chunks() == [1]
        again = cache.compute()
    assert "does not match its checksum" in caplog.text
    np.testing.assert_array_equal(again, first)
    assert cache.encoded_chunks == 1


def killed_checkpoint(checkpoints: Path, record: dict | None) -> None:
    """What a killed training leaves: a complete checkpoint and, since records exist, the record of its inputs."""
    (checkpoints / "checkpoint-4").mkdir(parents=True)
    (checkpoints / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4}')
    if record is not None:
        (checkpoints / "md2pr_resume.json").write_text(json.dumps(record))


def test_train_refuses_checkpoints_of_another_training(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "student"
    checkpoints = tmp_path / "student.checkpoints"
    killed_checkpoint(checkpoints, {"data": "another dataset's fingerprint", "epochs": 1.0})
    argv = ["train", "--input", str(training_rows(tmp_path / "rows")), "--model", str(tiny_model_path)]
    argv += ["--output_dir", str(out), "--beta", "0", "--batch_size", "2", "--device", "cpu"]
    code, err = cli(argv, capsys)
    assert code == 2 and "holds checkpoints of an interrupted student training run made with other" in err
    assert " data, " in err and "resuming them would train the wrong model" in err
    assert (checkpoints / "checkpoint-4").is_dir() and not out.exists()
    (checkpoints / "md2pr_resume.json").unlink()  # a checkpoint from before records existed
    code, err = cli(argv, capsys)
    assert code == 2 and "other inputs (no record of them)" in err
    assert cli(argv + ["--overwrite"], capsys)[0] == 0  # discards them and trains from the start
    assert (out / "model.safetensors").is_file() and not checkpoints.exists()


def test_train_student_checks_its_settings_before_any_work(tiny_model_path, tmp_path):
    from md2pr_st.config import LossArguments
    from md2pr_st.student import train_student

    rows = Dataset.load_from_disk(str(training_rows(tmp_path / "rows")))
    kwargs = dict(batch_size=2, device="cpu", save_steps=1)
    with pytest.raises(ValueError, match="epochs must be > 0"):
        train_student(str(tiny_model_path), rows, tmp_path / "s", LossArguments(beta=0), epochs=-1, **kwargs)
    with pytest.raises(ValueError, match="false_negative_margin must be a finite number"):
        train_student(str(tiny_model_path), rows, tmp_path / "s", false_negative_margin=float("nan"), **kwargs)
    path, log = train_student(str(tiny_model_path), rows, tmp_path / "s", LossArguments(beta=0), **kwargs)
    assert path.is_dir() and log[-1]["step"] == 2


def test_teacher_rerun_with_new_settings_retrains(tiny_cross_encoder_path, tmp_path, caplog):
    from test_teacher_training import toy_data

    from md2pr_st.teacher import TEACHER_REPORT, train_teacher

    kwargs = dict(base_model=tiny_cross_encoder_path, max_length=32, batch_size=2, show_progress_bar=False)
    out = train_teacher(toy_data(), tmp_path / "teacher", learning_rate=1e-4, **kwargs)
    mtime = (out / TEACHER_REPORT).stat().st_mtime_ns
    assert train_teacher(toy_data(), out, learning_rate=1e-4, **kwargs) == out  # same settings: reused
    assert (out / TEACHER_REPORT).stat().st_mtime_ns == mtime
    with caplog.at_level(logging.WARNING, logger="md2pr_st"):
        train_teacher(toy_data(), out, learning_rate=5e-5, epochs=2, **kwargs)
    assert "holds a teacher trained with other epochs, learning_rate: retraining it" in caplog.text
    report = json.loads((out / TEACHER_REPORT).read_text())
    assert (report["learning_rate"], report["epochs"], report["steps"]) == (5e-5, 2, 8)  # 8 pairs, batch 2
    killed_checkpoint(tmp_path / "teacher.checkpoints", {"data": "other"})
    with pytest.raises(OutputExistsError, match="interrupted teacher training run made with other"):
        train_teacher(toy_data(), out, learning_rate=1e-5, **kwargs)


def test_a_second_run_on_the_same_output_is_refused(tiny_model_path, tmp_path, capsys):
    out = tmp_path / "student"
    argv = ["train", "--input", str(training_rows(tmp_path / "rows")), "--model", str(tiny_model_path)]
    argv += ["--output_dir", str(out), "--beta", "0", "--device", "cpu"]
    with output_lock(out):  # another run holds it
        code, err = cli(argv, capsys)
    assert code == 1 and f"{out} is being written by another md2pr run (pid {os.getpid()})" in err
    with output_lock(tmp_path / "run"):
        with pytest.raises(OutputLockedError):
            with output_lock(tmp_path / "run"):
                pass
    # The lock is the kernel's: a run killed while holding it leaves none behind.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from md2pr_st.outputs import output_lock\n"
         "with output_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLockedError):
            with output_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):
        pass


def test_pipeline_refuses_a_foreign_run_folder_before_any_work(tiny_model_path, tmp_path):
    from test_pipeline import beir_with_splits, tiny_pipeline_args

    from md2pr_st.cli.arguments import DataArguments
    from md2pr_st.pipeline import run_pipeline

    project = user_folder(tmp_path / "project")
    splits = DataArguments(dataset=str(beir_with_splits(tmp_path / "data"))).load_splits()
    with pytest.raises(OutputExistsError, match="holds files md2pr did not write"):
        run_pipeline(splits, tiny_pipeline_args(tmp_path, tiny_model_path, output_dir=str(project)))
    assert sorted(p.name for p in project.iterdir()) == ["src"]


@pytest.mark.slow
def test_pipeline_stages_follow_the_data_and_the_teacher_settings(tiny_model_path, tmp_path):
    """Edit the train qrels in place: every stage that read them runs again (no stale "before" nDCG@10); retrain
    the teacher with another learning rate: the rounds that used it run again, the "before" evaluation does not."""
    from test_pipeline import beir_with_splits, tiny_pipeline_args

    from md2pr_st.cli.arguments import DataArguments
    from md2pr_st.pipeline import run_pipeline

    data = beir_with_splits(tmp_path / "data")
    run = tmp_path / "run"

    def stamps():
        return {p.parent.name: p.stat().st_mtime_ns for p in run.glob("*/stage.json")}

    def go(**overrides):
        args = tiny_pipeline_args(tmp_path, tiny_model_path, rounds=1, **overrides)
        return run_pipeline(DataArguments(dataset=str(data)).load_splits(), args)

    go()
    first = stamps()
    qrels = data / "qrels" / "test.tsv"  # edited in place, same path
    qrels.write_text(qrels.read_text().replace("\t3\n", "\t1\n"))
    go()
    second = stamps()
    assert second["before"] != first["before"] and second["round_1"] != first["round_1"]
    assert second["teacher"] == first["teacher"]  # the teacher reads train and dev only
    train = data / "qrels" / "train.tsv"
    train.write_text(train.read_text().replace("\t2\n", "\t1\n"))
    go()
    third = stamps()
    assert all(third[name] != second[name] for name in ("teacher", "before", "round_1"))
    go(teacher_learning_rate=2e-5)  # the default is 5e-5
    fourth = stamps()
    assert fourth["teacher"] != third["teacher"] and fourth["round_1"] != third["round_1"]
    assert fourth["before"] == third["before"]
    manifest = json.loads((run / "teacher" / "stage.json").read_text())
    assert manifest["settings"]["learning_rate"] == 2e-5
