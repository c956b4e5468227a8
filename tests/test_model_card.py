"""The MD2PR model card: Hub metadata, model-index equal to metrics.json, required sections, host card kept."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml

from md2pr_st.hub.model_card import HOST_END, HOST_START, RunInfo, split_front_matter, write_model_card
from md2pr_st.losses._shared import MD2PR_CITATION

METRICS = {
    "before": {
        "ndcg@10": 0.31234567891,
        "mrr@10": 0.4012,
        "recall@10": 0.2,
        "recall@100": 0.612,
        "map@100": 0.2101,
        "n_queries": 60,
        "n_queries_skipped": 0,
        "corpus_size": 6011,
    },
    "after": {
        "ndcg@10": 0.41234567891,
        "mrr@10": 0.5298765,
        "recall@10": 0.3,
        "recall@100": 0.7123456,
        "map@100": 0.3333333333,
        "n_queries": 60,
        "n_queries_skipped": 0,
        "corpus_size": 6011,
    },
    "teacher_rerank": {
        "ndcg@10": 0.5,
        "mrr@10": 0.61,
        "recall@100": 0.7123456,
        "map@100": 0.35,
        "n_queries": 60,
        "corpus_size": 6011,
    },
}
RUN_INFO = {
    "teacher": "cross-encoder/ms-marco-MiniLM-L6-v2",
    "student_base": "sentence-transformers/all-MiniLM-L6-v2",
    "alpha": 1.0,
    "beta": 0.25,
    "temperatures": {"teacher_temperature": 2.0, "student_temperature": 1.0, "word_temperature": 0.05},
    "rounds": [
        {"round": 1, "margin": 1.5, "candidates_scored": 2000, "flagged": 120, "dev_ndcg@10": 0.4},
        {"round": 2, "threshold": 7.25, "candidates": 1800, "flagged": 45, "filter_rate": 0.025, "dev_ndcg@10": 0.43},
    ],
    "command": ["md2pr", "train", "--dataset", "rag24", "--alpha", "1.0", "--beta", "0.25"],
    "dataset": "TREC RAG 2024",
    "split": "test",
    "learning_rate": 2e-05,
}


@pytest.fixture
def model_dir(tiny_model_path, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_model_path, target)
    return target


def _front_matter(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, flags=re.DOTALL)
    assert match, "the card must start with a YAML front matter block"
    return yaml.safe_load(match.group(1))


def test_front_matter_parses_and_model_index_equals_metrics(model_dir, tmp_path):
    metrics_path = tmp_path / "metrics.json"
    metrics_path.write_text(json.dumps(METRICS))
    card = write_model_card(model_dir, metrics_path, RUN_INFO, model_id="org/md2pr-tiny")
    meta = _front_matter(card.read_text(encoding="utf-8"))

    assert meta["library_name"] == "sentence-transformers"
    assert meta["pipeline_tag"] == "sentence-similarity"
    assert {"md2pr", "dense-retrieval", "knowledge-distillation", "sentence-transformers"} <= set(meta["tags"])
    assert "feature-extraction" in meta["tags"]  # the host card's tags are kept
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["datasets"] == ["trec-rag-2024"]
    assert meta["license"] == "apache-2.0"
    assert meta["language"] == "en"

    [entry] = meta["model-index"]
    [result] = entry["results"]
    assert result["task"]["type"] == "retrieval"
    assert result["dataset"] == {"name": "TREC RAG 2024", "type": "trec-rag-2024", "split": "test"}
    values = {m["type"]: m["value"] for m in result["metrics"]}
    after = json.loads(metrics_path.read_text())["after"]
    assert values == {
        "ndcg_at_10": after["ndcg@10"],
        "mrr_at_10": after["mrr@10"],
        "recall_at_100": after["recall@100"],
        "map_at_100": after["map@100"],
    }
    assert meta["metrics"] == ["ndcg_at_10", "mrr_at_10", "recall_at_100", "map_at_100"]


def test_body_has_the_required_sections(model_dir, tmp_path):
    plot = tmp_path / "dev_ndcg.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    card = write_model_card(model_dir, METRICS, RunInfo.from_dict(RUN_INFO), plots=[plot], model_id="org/md2pr-tiny")
    _, body = split_front_matter(card.read_text(encoding="utf-8"))

    assert "arxiv.org/abs/2312.16821" in body and "Multi-level Distillation" in body
    assert 'model = SentenceTransformer("org/md2pr-tiny")' in body
    assert "| Teacher (cross-encoder) | [cross-encoder/ms-marco-MiniLM-L6-v2]" in body
    assert "| Student base (dual-encoder) | [sentence-transformers/all-MiniLM-L6-v2]" in body
    assert "| Sentence-level weight `alpha` | 1.000000 |" in body
    assert "| Word-level weight `beta` | 0.250000 |" in body
    assert "| Temperature `teacher_temperature` | 2.0 |" in body
    assert "| Temperature `word_temperature` | 0.05 |" in body
    assert "| `learning_rate` | 2e-05 |" in body
    # Rounds: margin or threshold, candidates, flagged, filter rate (computed when missing), dev nDCG@10
    assert "| 1 | margin 1.5000 | 2,000 | 120 | 6.00% | 0.4000 |" in body
    assert "| 2 | threshold 7.2500 | 1,800 | 45 | 2.50% | 0.4300 |" in body
    # Results: before / after / teacher_rerank with the md2pr eval keys
    assert "| System | ndcg@10 | mrr@10 | recall@100 | map@100 | n_queries | corpus_size |" in body
    assert "| `before` | 0.3123 | 0.4012 | 0.6120 | 0.2101 | 60 | 6,011 |" in body
    assert "| `after` | 0.4123 | 0.5299 | 0.7123 | 0.3333 | 60 | 6,011 |" in body
    assert "| `teacher_rerank` | 0.5000 | 0.6100 | 0.7123 | 0.3500 | 60 | 6,011 |" in body
    # Plots are copied next to the card and linked relatively (works locally and on the Hub)
    assert "![dev ndcg](plots/dev_ndcg.png)" in body
    assert (model_dir / "plots" / "dev_ndcg.png").read_bytes() == plot.read_bytes()
    assert "md2pr train --dataset rag24 --alpha 1.0 --beta 0.25" in body
    assert "## Limitations" in body and "MS MARCO v2.1" in body and "non-commercial" in body
    assert MD2PR_CITATION.strip() in body
    assert "Haifeng Li and Mo Hai and Dong Tang" in body


def test_rounds_from_false_negative_filter_statistics(model_dir):
    # The shape of md2pr_st.false_negatives.FalseNegativeFilter's per-round statistics, plus the dev metric
    stats = {
        "round": 1,
        "rule": "dynamic",
        "quantile": 0.1,
        "threshold": None,
        "margin": 1.25,
        "rows": 100,
        "candidates_scored": 800,
        "flagged": 24,
        "flagged_fraction": 0.03,
        "gaps": {"count": 800, "mean": 4.0},
        "thresholds": {"count": 100, "mean": 3.5},
        "dev_ndcg@10": 0.375,
    }
    text = write_model_card(model_dir, METRICS, dict(RUN_INFO, rounds=[stats])).read_text(encoding="utf-8")
    assert "| 1 | dynamic, margin 1.2500 | 800 | 24 | 3.00% | 0.3750 |" in text


def test_host_card_is_kept_once_and_rewriting_is_idempotent(model_dir):
    host_text = (model_dir / "README.md").read_text(encoding="utf-8")
    host_front, host_body = split_front_matter(host_text)
    write_model_card(model_dir, METRICS, RUN_INFO, model_id="org/first")
    card = write_model_card(model_dir, METRICS, RUN_INFO, model_id="org/second")
    text = card.read_text(encoding="utf-8")
    meta, body = split_front_matter(text)

    assert body.count(HOST_START) == 1 and body.count(HOST_END) == 1
    host_part = body.split(HOST_START)[1].split(HOST_END)[0]
    # The generated sections survive (architecture, usage, framework versions, ...)
    for heading in ("### Full Model Architecture", "## Usage", "### Framework Versions", "## Model Details"):
        assert heading in host_body and heading in host_part
    assert "Pooling(" in host_part and "Output Dimensionality:** 32 dimensions" in host_part
    # Its title became a section heading; its usage snippet points at the repo id
    assert "## Sentence Transformers details: SentenceTransformer" in host_part
    assert 'SentenceTransformer("org/second")' in host_part
    assert "sentence_transformers_model_id" not in text and "org/first" not in text
    assert set(host_front["tags"]) <= set(meta["tags"])
    assert len(meta["tags"]) == len(set(meta["tags"]))
    assert meta["model-index"][0]["name"] == "second"


def test_card_is_generated_when_the_folder_has_no_readme(model_dir):
    (model_dir / "README.md").unlink()
    text = write_model_card(model_dir, METRICS, RUN_INFO).read_text(encoding="utf-8")
    assert "### Full Model Architecture" in text and "md2pr" in _front_matter(text)["tags"]


def test_tokens_in_the_command_are_redacted(model_dir):
    info = dict(RUN_INFO, command="md2pr train --hub_token hf_SECRETsecret1234567890abcdefXYZ --alpha 1")
    text = write_model_card(model_dir, METRICS, info).read_text(encoding="utf-8")
    assert "hf_SECRETsecret1234567890abcdefXYZ" not in text
    assert "md2pr train --hub_token hf_*** --alpha 1" in text


def test_local_student_base_is_not_a_base_model(model_dir, tmp_path):
    info = dict(RUN_INFO, student_base=str(tmp_path), teacher=str(tmp_path))
    text = write_model_card(model_dir, {"after": METRICS["after"]}, info).read_text(encoding="utf-8")
    meta, body = split_front_matter(text)
    assert "base_model" not in meta  # the Hub rejects a local path as base_model
    assert f"`{tmp_path.parent.name}/{tmp_path.name}` (a local folder)" in body
    assert "| `after` |" in body and "| `before` |" not in body


def test_without_metrics_there_is_no_model_index(model_dir):
    text = write_model_card(model_dir, None, None).read_text(encoding="utf-8")
    meta, body = split_front_matter(text)
    assert "model-index" not in meta
    assert "No evaluation results were recorded" in body and "No mining rounds were recorded" in body


def test_input_errors_are_clear(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics file .* does not exist"):
        write_model_card(model_dir, tmp_path / "missing.json", RUN_INFO)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="run info file .* is not valid JSON"):
        write_model_card(model_dir, METRICS, bad)
    with pytest.raises(FileNotFoundError, match="Plot .* does not exist"):
        write_model_card(model_dir, METRICS, RUN_INFO, plots=[tmp_path / "nope.png"])
    with pytest.raises(FileNotFoundError, match="Model folder"):
        write_model_card(tmp_path / "no_model", METRICS, RUN_INFO)


SECRET = "ZEBRA-SECRET-PASSAGE-42"


def _rows_with_a_secret():
    """Training rows whose every passage carries SECRET: any row the host copies into a card shows it."""
    from datasets import Dataset

    topics = ["cat", "dog", "tea", "sea", "river", "island"]
    return Dataset.from_dict(
        {
            "query": [f"what is the {t}" for t in topics],
            "positive": [f"{SECRET} the {t} is a {t}" for t in topics],
            "negative_1": [f"{SECRET} the {t} is not a {t}" for t in topics],
        }
    )


def _assert_card_without_data(text: str) -> None:
    assert SECRET not in text and SECRET.lower() not in text.lower()
    meta, body = split_front_matter(text)
    assert "widget" not in meta
    assert {"md2pr", "generated_from_trainer", "loss:MD2PRLoss"} <= set(meta["tags"])
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == METRICS["after"]["ndcg@10"]
    host_part = body.split(HOST_START)[1].split(HOST_END)[0]
    for section in ("### Full Model Architecture", "## Usage", "### Training Dataset", "### Training Hyperparameters",
                    "### Framework Versions"):  # fmt: skip
        assert section in host_part, section
    assert "* Size: 6 training samples" in host_part and "* Samples:" not in host_part
    assert "<code>positive</code>" in host_part and "max: " in host_part  # columns and token statistics stay
    assert 'model = SentenceTransformer("org/md2pr-tiny")' in host_part and "model.encode_query(" in host_part


def test_card_of_a_trained_student_carries_no_training_text(tiny_model_path, tmp_path, one_torch_thread):
    from md2pr_st.cli.arguments import LossArguments
    from md2pr_st.student import train_student

    no_distillation = LossArguments(alpha=0.0, beta=0.0)
    path, _ = train_student(
        tiny_model_path, _rows_with_a_secret(), tmp_path / "student", no_distillation, batch_size=2, device="cpu"
    )
    assert SECRET not in (path / "README.md").read_text(encoding="utf-8")  # the host card saved after training
    card = write_model_card(path, METRICS, RUN_INFO, model_id="org/md2pr-tiny")
    _assert_card_without_data(card.read_text(encoding="utf-8"))


def test_card_strips_training_text_from_a_host_card_that_has_it(tiny_model_path, tmp_path, one_torch_thread):
    """A student trained with the host trainer alone: its card quotes the data in three places."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from md2pr_st.losses import MD2PRLoss

    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "checkpoints"), per_device_train_batch_size=2, report_to=[], use_cpu=True
    )
    loss = MD2PRLoss(model, alpha=0.0, beta=0.0, false_negative_margin=None)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=_rows_with_a_secret(), loss=loss).train()
    model.save(str(tmp_path / "student"))
    host = (tmp_path / "student" / "README.md").read_text(encoding="utf-8")
    host_front, host_body = split_front_matter(host)
    assert SECRET in str(host_front["widget"])
    assert SECRET in host_body.split("* Samples:")[1].split("* Loss:")[0]
    assert SECRET in host_body.split("```python")[1].split("```")[0]

    card = write_model_card(tmp_path / "student", METRICS, RUN_INFO, model_id="org/md2pr-tiny")
    _assert_card_without_data(card.read_text(encoding="utf-8"))
