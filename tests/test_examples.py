"""Each example runs end to end at tiny size (tiny random models, a 36-passage BEIR folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_pipeline import beir_with_splits

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def beir_folder(tmp_path_factory):
    return beir_with_splits(tmp_path_factory.mktemp("examples") / "data")


def test_drop_in_fit(tiny_model_path, tiny_cross_encoder_path, beir_folder, tmp_path):
    out = run_example(
        "drop_in_fit.py",
        *("--model", str(tiny_model_path), "--teacher", str(tiny_cross_encoder_path)),
        *("--dataset", str(beir_folder), "--max-steps", "2", "--batch-size", "4", "--num-negatives", "1"),
        *("--output-dir", str(tmp_path / "fit")),
        cwd=tmp_path,
    )
    assert "dev_ndcg@10" in out
    assert (tmp_path / "fit" / "final" / "model.safetensors").is_file()


def test_bring_your_own_data(tiny_model_path, tiny_cross_encoder_path, beir_folder, tmp_path):
    out = run_example(
        "bring_your_own_data.py",
        str(beir_folder),
        *("--model", str(tiny_model_path), "--teacher", str(tiny_cross_encoder_path)),
        *("--num-negatives", "2", "--batch-size", "4", "--output-dir", str(tmp_path / "byod")),
        cwd=tmp_path,
    )
    assert "before:" in out and "after:" in out and "false negatives:" in out
    assert (tmp_path / "byod" / "student" / "modules.json").is_file()


def test_train_rag24_runs_the_pipeline_on_any_dataset(tiny_model_path, tiny_cross_encoder_path, beir_folder, tmp_path):
    out = run_example(
        "train_rag24.py",
        *("--dataset", str(beir_folder), "--model", str(tiny_model_path), "--teacher", str(tiny_cross_encoder_path)),
        *("--rounds", "1", "--batch-size", "4", "--teacher-max-length", "48", "--output-dir", str(tmp_path / "run")),
        cwd=tmp_path,
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) == {"before", "after", "teacher_rerank", "after_minus_before"}
    assert str(round(metrics["after"]["ndcg@10"], 4)) in out


def test_multi_gpu_doc_names_real_options():
    text = (EXAMPLES / "multi_gpu.md").read_text()
    from md2pr_st.losses import MD2PRLoss

    assert "gather_across_devices" in text
    assert "gather_across_devices" in MD2PRLoss.__init__.__code__.co_varnames


def python_blocks(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]


def test_the_readme_quickstart_runs(tiny_model_path, tiny_cross_encoder_path, tmp_path, monkeypatch):
    """The README's quickstart, at most 10 lines, with tiny models and 6 rows for the Hub's model and data."""
    block = python_blocks(EXAMPLES.parent / "README.md")[0]
    assert "MD2PRLoss(" in block and len(block.strip().splitlines()) <= 10
    rows = "Dataset.from_dict({'query': QUERIES, 'positive': POSITIVES, 'negative': NEGATIVES})"
    code = (
        block.replace('"sentence-transformers/all-MiniLM-L6-v2"', repr(str(tiny_model_path)))
        .replace('"cross-encoder/ms-marco-MiniLM-L6-v2"', repr(str(tiny_cross_encoder_path)))
        .replace('load_dataset("sentence-transformers/msmarco-bm25", "triplet", split="train[:10000]")', rows)
        .replace('"md2pr-minilm"', repr(str(tmp_path / "md2pr-minilm")))
    )
    assert code.count(str(tiny_model_path)) == 1 and "Dataset.from_dict" in code  # every substitution applied
    setup = (
        "from datasets import Dataset\n"
        "QUERIES = ['what is python', 'capital of france', 'tea or coffee', 'why a cat', 'where is paris', 'who']\n"
        "POSITIVES = ['python is a snake', 'paris is the capital', 'tea and coffee', 'a cat purrs', 'paris in france',"
        " 'someone']\n"
        "NEGATIVES = ['java island', 'the river', 'the sea', 'a dog', 'the ocean', 'a model']\n"
    )
    monkeypatch.chdir(tmp_path)  # the trainer's default output folder
    exec(compile(setup + code, "README.md", "exec"), {})  # noqa: S102
    from sentence_transformers import SentenceTransformer

    reloaded = SentenceTransformer(str(tmp_path / "md2pr-minilm"), device="cpu")
    assert reloaded.encode(["a query"]).shape == (1, 32)


def test_the_usage_guide_round_by_hand_runs(tiny_model_path, tiny_cross_encoder_path, beir_folder, tmp_path):
    """docs/usage.md's "one MD2PR round by hand" block, on the tiny models and the BEIR folder instead of RAG24."""
    blocks = python_blocks(EXAMPLES.parent / "docs" / "usage.md")
    block = next(b for b in blocks if "MD2PRLoss(" in b and "FalseNegativeFilter(" in b)
    code = (
        block.replace('load_rag24("train")', f'load_beir({str(beir_folder)!r}, "train")')
        .replace('"path/or/hub-id-of-a-cross-encoder"', repr(str(tiny_cross_encoder_path)))
        .replace('"runs/md2pr"', repr(str(tmp_path / "out")))
        .replace("num_negatives=8", "num_negatives=3")
        .replace("num_negatives=4", "num_negatives=2")
    )
    assert code.count("load_beir(") == 1 and str(tiny_cross_encoder_path) in code  # every substitution applied
    setup = (
        "from sentence_transformers import SentenceTransformer\nfrom md2pr_st import load_beir\n"
        f"model = SentenceTransformer({str(tiny_model_path)!r}, device='cpu')\n"
    )
    namespace: dict = {}
    exec(compile(setup + code, "usage.md", "exec"), namespace)  # noqa: S102
    assert namespace["round_"]["flagged"] >= 0 and len(namespace["rows"]) > 0
    assert namespace["loss"].false_negative_threshold == namespace["round_"]["threshold"]
    # The next block: the teacher's attention recorded in the filter pass, MD2PR inside MatryoshkaLoss.
    block = next(b for b in blocks if "AttentionRecorder(" in b)
    code = (
        block.replace('"runs/attention"', repr(str(tmp_path / "attention")))
        .replace("[384, 256, 128, 64]", "[32, 16]")
        .replace("num_negatives=4", "num_negatives=2")
    )
    exec(compile(code, "usage.md", "exec"), namespace)  # noqa: S102
    from sentence_transformers import SentenceTransformerTrainer

    SentenceTransformerTrainer(model=namespace["model"], args=namespace["args"], train_dataset=namespace["rows"],
                               loss=namespace["loss"]).train()  # fmt: skip
    assert namespace["loss"].loss.teacher.__class__.__name__ == "OfflineTeacher"
