from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from md2pr_st.cli import main
from md2pr_st.cli.arguments import DataArguments, PipelineArguments
from md2pr_st.pipeline import STAGE_FILE, Stage, run_pipeline
from md2pr_st.training import last_complete_checkpoint
from test_data import write_beir
from tiny_models import build_tiny_bert

TOPICS = ["cat", "dog", "paris", "python", "tea", "coffee", "river", "sea", "snake", "island", "france", "ocean"]


def beir_with_splits(folder):
    corpus, queries, qrels = [], [], {"train": [], "dev": [], "test": []}
    for i, topic in enumerate(TOPICS):
        queries.append({"_id": f"q{i}", "text": f"what is the {topic}"})
        for j in range(3):
            corpus.append({"_id": f"d{i}_{j}", "text": f"the {topic} is {['a', 'the', 'not'][j]} {topic} {j}"})
        split = "train" if i < 8 else ("dev" if i < 10 else "test")
        qrels[split] += [(f"q{i}", f"d{i}_0", 3), (f"q{i}", f"d{i}_1", 2), (f"q{i}", f"d{i}_2", 0)]
    write_beir(folder, corpus, queries, qrels["train"], "train")
    for split in ("dev", "test"):
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q, d, g in qrels[split]]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_stage_manifest_detects_changed_settings(tmp_path):
    stage = Stage(tmp_path / "s", {"a": 1})
    assert not stage.done
    stage.finish({"x": 2})
    assert Stage(tmp_path / "s", {"a": 1}).done
    assert not Stage(tmp_path / "s", {"a": 2}).done
    assert Stage(tmp_path / "s", {"a": 1}).manifest["outputs"] == {"x": 2}


def tiny_pipeline_args(tmp_path, tiny_model_path, **overrides) -> PipelineArguments:
    """Pipeline settings for the tiny student, a tiny teacher backbone and the 36-passage BEIR data."""
    settings = dict(
        output_dir=str(tmp_path / "run"),
        model=str(tiny_model_path),
        teacher_base=str(build_tiny_bert(tmp_path / "teacher_base", seed=3)),
        teacher_max_length=48,
        num_negatives=2,
        mine_candidates=3,
        range_max=10,
        batch_size=4,
        rerank_k=5,
        device="cpu",
    )
    return PipelineArguments(**{**settings, **overrides})


def test_pipeline_end_to_end_on_tiny_models_and_resume(tiny_model_path, tmp_path, capsys):
    data = beir_with_splits(tmp_path / "data")
    args = tiny_pipeline_args(tmp_path, tiny_model_path, rounds=2)
    metrics = run_pipeline(DataArguments(dataset=str(data)).load_splits(), args, command="md2pr pipeline --test")
    run = tmp_path / "run"
    assert set(metrics) == {"before", "after", "teacher_rerank", "after_minus_before"}
    for name in ("before", "after", "teacher_rerank"):
        part = metrics[name]
        assert {"ndcg@10", "mrr@10", "recall@100", "map@100", "n_queries", "corpus_size"} <= set(part)
        assert part["n_queries"] == 2 and part["corpus_size"] == 36
    # The paired significance of after - before, per metric, from the per-query values of both evaluations.
    for metric, ci in metrics["after_minus_before"].items():
        after, before = metrics["after"]["per_query"][metric], metrics["before"]["per_query"][metric]
        assert ci["n"] == 2 and ci["mean_diff"] == pytest.approx(sum(after.values()) / 2 - sum(before.values()) / 2)
        assert ci["low"] <= ci["mean_diff"] <= ci["high"]
        assert sum(after.values()) / 2 == pytest.approx(metrics["after"][metric])
    assert json.loads((run / "metrics.json").read_text()) == metrics
    for png in ("loss_parts.png", "rounds.png", "round_1/filter_gaps.png"):
        assert (run / png).stat().st_size > 1000
    info = json.loads((run / "run_info.json").read_text())
    assert [r["round"] for r in info["rounds"]] == [1, 2]
    assert info["command"] == "md2pr pipeline --test"
    # The model is a plain sentence-transformers folder with a card whose model-index equals metrics.json.
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(run / "model"), device="cpu").encode(["a cat"]).shape == (1, 32)
    card = (run / "model" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    values = {m["type"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    assert values["ndcg_at_10"] == metrics["after"]["ndcg@10"]
    corpus = [json.loads(line)["text"] for line in (data / "corpus.jsonl").read_text().splitlines()]
    assert "widget" not in front and not [text for text in corpus if text in card]  # no data text in the card
    # Re-running the same command redoes no finished stage.
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("*/stage.json")}
    assert len(stamps) == 4  # teacher, before, round_1, round_2
    again = run_pipeline(DataArguments(dataset=str(data)).load_splits(), args, command="md2pr pipeline --test")
    assert {p: p.stat().st_mtime_ns for p in run.glob("*/stage.json")} == stamps
    timeless = [{k: v for k, v in m["after"].items() if k != "seconds"} for m in (again, metrics)]
    assert timeless[0] == timeless[1]  # the final evaluation runs again; only its timing differs


def test_pipeline_with_graded_sentence_scores(tiny_model_path, tmp_path):
    """sentence_scores='qrels': the training rows carry the judgements' grades (unjudged = 0), not teacher logits."""
    from datasets import load_from_disk

    data = beir_with_splits(tmp_path / "data")
    args = tiny_pipeline_args(
        tmp_path,
        tiny_model_path,
        rounds=1,
        positives="1",
        min_grade=3,
        sentence_scores="qrels",
        filter_rule="dynamic",
        filter_quantile=0.0,  # m_r = the smallest gap: 1, a grade-2 candidate under a grade-3 positive
        mine_candidates=6,
    )
    run_pipeline(DataArguments(dataset=str(data)).load_splits(), args, command="md2pr pipeline --test")
    rows = load_from_disk(str(tmp_path / "run" / "round_1" / "filtered"))
    assert 0 < len(rows) == len(set(rows["query"])) <= 8  # one row per train query (its best positive), if kept
    grades = {}
    for line in (data / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        q, d, g = line.split("\t")
        grades[(q, d)] = float(g)
    text_of = {json.loads(x)["_id"]: json.loads(x)["text"] for x in (data / "corpus.jsonl").read_text().splitlines()}
    query_of = {json.loads(x)["text"]: json.loads(x)["_id"] for x in (data / "queries.jsonl").read_text().splitlines()}
    masked = 0
    for row in rows:
        q = query_of[row["query"]]
        own = {text_of[d]: g for (qq, d), g in grades.items() if qq == q}
        assert row["scores"] == [own.get(row[c], 0.0) for c in ("positive", "negative_1", "negative_2")]
        assert row["scores"][0] == 3.0  # positives: grade >= 3
        masked += sum(score >= 3.0 - 1.0 for score in row["scores"][1:])
    # Grade-2 passages are candidates: their gap 1 is the round's 0-quantile, so m_r = 1 flags them; they are
    # kept (for L_s) and counted as masked, and the loss leaves them out of L_c with the same margin.
    stats = json.loads((tmp_path / "run" / "round_1" / "filter_stats.json").read_text())["rounds"][0]
    assert stats["margin"] == 1.0 and stats["action"] == "mask"
    assert stats["masked"] == masked > 0 and stats["dropped_rows"] == 0
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "used graded judgements of" in card and "masked\nout of the contrastive loss" in card


def test_demo_command_help_and_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    assert "runs/demo" in capsys.readouterr().out
    with pytest.raises(ValueError, match="sentence_scores must be 'teacher' or 'qrels'"):
        PipelineArguments(sentence_scores="llm")
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--no_such_flag", "1"])
    assert exc.value.code == 2


def test_stage_start_removes_partial_outputs_of_other_settings(tmp_path):
    checkpoints = tmp_path / "round_1" / "student.checkpoints"
    (checkpoints / "checkpoint-5").mkdir(parents=True)
    Stage(tmp_path / "round_1", {"lr": 1}).start(partial=[checkpoints])  # first start: nothing recorded yet
    assert not checkpoints.exists()  # started under unknown settings: not resumable
    (checkpoints / "checkpoint-5").mkdir(parents=True)
    Stage(tmp_path / "round_1", {"lr": 1}).start(partial=[checkpoints])  # same settings: resume
    assert (checkpoints / "checkpoint-5").is_dir()
    Stage(tmp_path / "round_1", {"lr": 2}).start(partial=[checkpoints])  # changed: the checkpoint is another run's
    assert not checkpoints.exists()


def test_demo_defaults_validate_and_bad_settings_fail_before_any_work():
    from md2pr_st.cli.arguments import DemoArguments, DemoLossArguments

    demo, loss = DemoArguments(), DemoLossArguments()
    assert (demo.sentence_scores, demo.min_grade, demo.rounds, demo.output_dir) == ("qrels", 3, 1, "runs/demo")
    assert (loss.alpha, loss.beta) == (1.0, 0.0)
    with pytest.raises(ValueError, match="positives must be 'all', 'best' or a positive integer"):
        PipelineArguments(positives="most")
    with pytest.raises(ValueError, match="re-estimates the threshold every round"):
        PipelineArguments(filter_rule="absolute")


def test_pipeline_argument_errors(capsys):
    with pytest.raises(ValueError, match="mine_candidates .* must be >= num_negatives"):
        PipelineArguments(num_negatives=4, mine_candidates=2)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        PipelineArguments(rounds=0)
    with pytest.raises(SystemExit) as exc:
        main(["pipeline", "--help"])
    assert exc.value.code == 0


def test_teacher_and_train_stage_commands(tiny_model_path, tmp_path, capsys):
    from datasets import Dataset
    from sentence_transformers import CrossEncoder, SentenceTransformer

    data = beir_with_splits(tmp_path / "data")
    base = build_tiny_bert(tmp_path / "teacher_base", seed=3)
    teacher_dir = tmp_path / "teacher"
    args = ["teacher", "--dataset", str(data), "--base_model", str(base), "--student", str(tiny_model_path)]
    args += ["--max_length", "48", "--device", "cpu", "--mined_negatives", "2"]
    assert main(args + ["--output_dir", str(teacher_dir)]) == 0
    assert "gap" in capsys.readouterr().out
    report = json.loads((teacher_dir / "md2pr_teacher.json").read_text())
    assert report["mined_negatives"] == 2 and report["record"]["mined_negatives"] == 2
    assert report["dev"]["gap"] == pytest.approx(report["dev"]["teacher"] - report["dev"]["student"], abs=1e-4)
    assert CrossEncoder(str(teacher_dir)).predict([("a", "b")]).shape == (1,)

    rows = Dataset.from_dict(
        {
            "query": ["what is the cat", "what is the dog", "what is the tea", "what is the sea"],
            "positive": ["the cat is a cat", "the dog is a dog", "the tea is a tea", "the sea is a sea"],
            "negative_1": ["the dog is not", "the tea is not", "the sea is not", "the cat is not"],
            "scores": [[3.0, -1.0], [2.0, 0.0], [1.5, -0.5], [2.5, 1.0]],
        }
    )
    rows.save_to_disk(str(tmp_path / "filtered"))
    # As md2pr filter --action mask leaves it: md2pr train masks with that round's margin unless told otherwise.
    stats = {"rule": "dynamic", "rounds": [{"round": 1, "action": "mask", "margin": 1.0}]}
    (tmp_path / "filtered" / "md2pr_filter.json").write_text(json.dumps(stats))
    out = tmp_path / "student"
    train = ["train", "--input", str(tmp_path / "filtered"), "--model", str(tiny_model_path), "--beta", "0"]
    assert main(train + ["--output_dir", str(out), "--batch_size", "2", "--device", "cpu"]) == 0
    assert "filtered with action='mask': masking with its margin 1 in L_c" in capsys.readouterr().out
    trained = SentenceTransformer(str(out), device="cpu").encode(["a cat"])
    before = SentenceTransformer(str(tiny_model_path), device="cpu").encode(["a cat"])
    assert trained.shape == before.shape and not (trained == before).all()

    assert main(["train", "--input", str(tmp_path / "nowhere")]) == 1
    assert "not a `datasets` folder" in capsys.readouterr().err
    word_level = ["train", "--input", str(tmp_path / "filtered"), "--model", str(tiny_model_path), "--beta", "1"]
    assert main(word_level) == 1
    assert "needs an online teacher" in capsys.readouterr().err


def test_last_complete_checkpoint_skips_and_deletes_interrupted_ones(tmp_path):
    for step, state in ((5, "{}"), (10, "{}"), (15, None), (20, '{"global_st')):  # 15, 20: killed mid-write
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-5"]
    assert last_complete_checkpoint(tmp_path / "missing") is None


def _checkpoint_steps(folder, complete_only=False):
    """Steps of ``folder/checkpoint-*``; ``complete_only``: those whose trainer_state.json (written last) parses."""
    steps = []
    for path in folder.glob("checkpoint-*"):
        if complete_only:
            try:
                json.loads((path / "trainer_state.json").read_text())
            except (OSError, ValueError):
                continue
        steps.append(int(path.name.split("-")[-1]))
    return sorted(steps)


@pytest.mark.slow
def test_pipeline_killed_during_student_training_resumes_from_its_checkpoint(tiny_model_path, tmp_path):
    data = beir_with_splits(tmp_path / "data")
    teacher_base = build_tiny_bert(tmp_path / "teacher_base", seed=3)
    run = tmp_path / "run"
    checkpoints = run / "round_1" / "student.checkpoints"
    # 16 training rows, batch 4: 4 steps per epoch; 30 epochs are long enough to be caught mid-run.
    command = [sys.executable, "-m", "md2pr_st.cli", "-v", "pipeline", "--dataset", str(data),
               "--output_dir", str(run), "--model", str(tiny_model_path), "--teacher_base", str(teacher_base),
               "--teacher_max_length", "48", "--rounds", "1", "--num_negatives", "2", "--mine_candidates", "3",
               "--range_max", "10", "--batch_size", "4", "--epochs_per_round", "30", "--save_steps", "5",
               "--rerank_k", "5", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}

    # First run: SIGKILL as soon as a checkpoint after the first complete one starts being written, so the kill
    # lands during training, often in the middle of writing a checkpoint.
    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline, first_complete = time.monotonic() + 120, None
        try:
            while process.poll() is None and time.monotonic() < deadline:
                if first_complete is None:
                    first_complete = next(iter(_checkpoint_steps(checkpoints, complete_only=True)), None)
                elif any(step > first_complete for step in _checkpoint_steps(checkpoints)):
                    break
                time.sleep(0.01)
        finally:
            process.kill()
            process.wait()
    first_log = (tmp_path / "first.log").read_text()
    assert process.returncode == -signal.SIGKILL, f"the pipeline ended before it was killed:\n{first_log[-3000:]}"
    assert first_complete is not None, f"no checkpoint within the time limit:\n{first_log[-3000:]}"
    assert not (run / "round_1" / STAGE_FILE).exists()  # the round is not marked done
    assert (run / "teacher" / STAGE_FILE).is_file() and not (run / "metrics.json").exists()
    resume_step = _checkpoint_steps(checkpoints, complete_only=True)[-1]
    teacher_files = [run / "teacher" / STAGE_FILE, *(run / "teacher" / "model").glob("*.safetensors")]
    stamps = {path: path.stat().st_mtime_ns for path in teacher_files}

    # Second run: the same command, to completion.
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    output = rerun.stdout + rerun.stderr
    (tmp_path / "second.log").write_text(output)
    assert rerun.returncode == 0, output[-3000:]
    # (a) the teacher stage was not redone
    assert {path: path.stat().st_mtime_ns for path in teacher_files} == stamps
    assert "Stage 0" not in output
    # (b) student training resumed from the last complete checkpoint: the host trainer ran only the remaining steps
    assert f"Resuming student training from {checkpoints / f'checkpoint-{resume_step}'}" in output
    log_history = json.loads((run / "round_1" / STAGE_FILE).read_text())["outputs"]["log_history"]
    summary = next(entry for entry in log_history if "train_runtime" in entry)
    max_steps = summary["step"]
    assert max_steps > resume_step > 0
    assert round(summary["train_steps_per_second"] * summary["train_runtime"]) == max_steps - resume_step
    assert [entry["step"] for entry in log_history if "loss" in entry] == list(range(1, max_steps + 1))
    # (c) the run finished
    assert (run / "round_1" / STAGE_FILE).is_file() and not checkpoints.exists()
    assert set(json.loads((run / "metrics.json").read_text())) == {
        "before",
        "after",
        "teacher_rerank",
        "after_minus_before",
    }
    assert (run / "model" / "model.safetensors").is_file() and (run / "model" / "README.md").is_file()
