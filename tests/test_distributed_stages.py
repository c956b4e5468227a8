"""A round's stages on 2 processes (``torchrun``, gloo on CPU) give what 1 process gives: the same mined rows, the
same teacher scores and false-negative decisions, the same metrics; only the main process writes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from datasets import load_from_disk
from test_pipeline import beir_with_splits

from md2pr_st import distributed


def md2pr(*args: str, processes: int, cwd, accelerate: bool = False) -> None:
    """Run ``md2pr`` on ``processes`` processes (``torchrun``, or ``accelerate launch``); on several, check that each
    joined the group (so the stage split)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    if accelerate:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
        launcher += ["--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no"]
        launcher += ["--dynamo_backend", "no", "--main_process_port", "0"]
    command = [*launcher, "-m", "md2pr_st.cli", "-v"] if processes > 1 else [sys.executable, "-m", "md2pr_st.cli"]
    proc = subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-6000:]
    for rank in range(processes if processes > 1 else 0):
        assert f"Process {rank} of {processes} joined the gloo process group" in proc.stderr
        assert f"Process {rank} left the process group." in proc.stderr  # closed before the interpreter's teardown


def test_shares_cover_every_item_once_in_order(monkeypatch):
    for world in (1, 2, 3, 7):
        bounds = []
        for r in range(world):
            monkeypatch.setattr(distributed, "rank", lambda r=r: r)
            monkeypatch.setattr(distributed, "world_size", lambda w=world: w)
            bounds.append(distributed.shard_bounds(10))
        assert bounds[0][0] == 0 and bounds[-1][1] == 10
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


@pytest.mark.slow
def test_mine_filter_and_eval_on_two_processes_match_one(tiny_model_path, tiny_cross_encoder_path, tmp_path):
    data = str(beir_with_splits(tmp_path / "data"))
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        out.mkdir()
        mine = ("mine", "--input", data, "--model", str(tiny_model_path), "--output", str(out / "mined"))
        md2pr(*mine, "--num_negatives", "4", "--range_max", "12", "--chunk_size", "10", processes=n, cwd=out)
        flt = ("filter", "--input", str(out / "mined"), "--teacher", str(tiny_cross_encoder_path))
        md2pr(
            *flt, "--output", str(out / "filtered"), "--max_length", "48", "--num_negatives", "2", processes=n, cwd=out
        )
        evaluate = ("eval", "--dataset", data, "--split", "test", "--model", str(tiny_model_path))
        md2pr(*evaluate, "--output", str(out / "eval.json"), processes=n, cwd=out)

    one, two = tmp_path / "p1", tmp_path / "p2"
    # Only the main process wrote: the same files, no second copy.
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    mined = [load_from_disk(str(p / "mined")) for p in (one, two)]
    assert len(mined[0]) > 0 and mined[0].to_dict() == mined[1].to_dict()
    filtered = [load_from_disk(str(p / "filtered")) for p in (one, two)]
    assert filtered[0].column_names == filtered[1].column_names and len(filtered[0]) == len(filtered[1])
    for column in filtered[0].column_names:
        a, b = filtered[0][column], filtered[1][column]
        if column == "scores":
            np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-5)
        else:
            assert a == b, column
    metrics = [json.loads((p / "eval.json").read_text()) for p in (one, two)]
    for key in ("ndcg@10", "mrr@10", "recall@100", "n_queries", "corpus_size"):
        assert metrics[0][key] == pytest.approx(metrics[1][key], abs=1e-9), key


@pytest.mark.slow
def test_the_pipeline_runs_unchanged_on_two_processes_and_resumes(tiny_model_path, tmp_path):
    """``md2pr pipeline`` under torchrun: the evaluation before training equals one process's (the encoding is split,
    nothing else changes), the run folder holds what a 1-process run writes, and a second launch redoes no stage."""
    from tiny_models import build_tiny_bert

    data = str(beir_with_splits(tmp_path / "data"))
    base = str(build_tiny_bert(tmp_path / "teacher_base", seed=3))
    settings = ("--dataset", data, "--model", str(tiny_model_path), "--teacher_base", base, "--rounds", "1")
    settings += ("--teacher_max_length", "48", "--num_negatives", "2", "--mine_candidates", "3", "--range_max", "10")
    settings += ("--batch_size", "2", "--rerank_k", "5", "--device", "cpu")
    for n in (1, 2):
        md2pr("pipeline", *settings, "--output_dir", str(tmp_path / f"run{n}"), processes=n, cwd=tmp_path)
    one, two = (json.loads((tmp_path / f"run{n}" / "metrics.json").read_text()) for n in (1, 2))
    for metric in ("ndcg@10", "mrr@10", "recall@100"):
        assert one["before"][metric] == pytest.approx(two["before"][metric], abs=1e-9)
        assert 0 <= two["after"][metric] <= 1

    def files(n: int) -> list[str]:  # the embedding caches are named by the (trained) student's fingerprint
        run = tmp_path / f"run{n}"
        return sorted(
            re.sub(r"embeddings/[0-9a-f]{16}", "embeddings/H", str(p.relative_to(run))) for p in run.rglob("*")
        )

    assert files(1) == files(2)
    steps = json.loads((tmp_path / "run2" / "round_1" / "stage.json").read_text())["outputs"]["log_history"][-1]
    assert steps["step"] > 0  # the student trained (DDP, 2 processes)
    manifests = sorted((tmp_path / "run2").rglob("stage.json"))
    written = [p.stat().st_mtime_ns for p in manifests]
    md2pr("pipeline", *settings, "--output_dir", str(tmp_path / "run2"), processes=2, cwd=tmp_path)
    assert [p.stat().st_mtime_ns for p in manifests] == written
    again = json.loads((tmp_path / "run2" / "metrics.json").read_text())["after"]
    assert {k: v for k, v in again.items() if k != "seconds"} == {
        k: v for k, v in two["after"].items() if k != "seconds"
    }


@pytest.mark.slow
def test_eval_under_accelerate_launch_matches_one_process(tiny_model_path, tmp_path):
    """The commands run unchanged under ``accelerate launch`` (the host's launcher), not only under torchrun."""
    data = str(beir_with_splits(tmp_path / "data"))
    evaluate = ("eval", "--dataset", data, "--split", "test", "--model", str(tiny_model_path))
    md2pr(*evaluate, "--output", str(tmp_path / "one.json"), processes=1, cwd=tmp_path)
    md2pr(*evaluate, "--output", str(tmp_path / "two.json"), processes=2, cwd=tmp_path, accelerate=True)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    for key in ("ndcg@10", "mrr@10", "recall@100", "n_queries", "corpus_size"):
        assert one[key] == pytest.approx(two[key], abs=1e-9), key
