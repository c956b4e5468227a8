"""The MD2PR model card, rendered by the host from MD2PRModelCardData: Hub metadata with a model-index equal to
metrics.json, the required sections, the host's sections, no dataset texts, and cards that tell the truth (a RAG24
run and a bring-your-own-data run), with plots that survive a re-save."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from huggingface_hub import ModelCard

from md2pr_st.citation import MD2PR_CITATION
from md2pr_st.hub import MD2PRModelCardData, RunInfo, run_plots, use_md2pr_card_data, write_model_card

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
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
MS_MARCO_LINE = "MS MARCO v2.1 segments, distributed under the MS MARCO terms"


@pytest.fixture
def model_dir(tiny_model_path, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_model_path, target)
    return target


def _front_matter(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, flags=re.DOTALL)
    assert match, "the card must start with a YAML front matter block"
    return yaml.safe_load(match.group(1))


def _card(path) -> tuple[dict, str]:
    text = path.read_text(encoding="utf-8")
    return _front_matter(text), ModelCard(text).text


def _table_rows(body: str) -> list[str]:
    return [line for line in body.splitlines() if line.startswith("| ")]


def test_front_matter_parses_and_model_index_equals_metrics(model_dir, tmp_path):
    metrics_path = tmp_path / "metrics.json"
    metrics_path.write_text(json.dumps(METRICS))
    card = write_model_card(model_dir, metrics_path, RUN_INFO, model_id="org/md2pr-tiny")
    meta, _ = _card(card)

    assert meta["library_name"] == "sentence-transformers"
    assert meta["pipeline_tag"] == "sentence-similarity"
    assert {"md2pr", "dense-retrieval", "knowledge-distillation", "sentence-transformers"} <= set(meta["tags"])
    assert "feature-extraction" in meta["tags"]  # the host's tags are kept
    assert len(meta["tags"]) == len(set(meta["tags"]))
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "datasets" not in meta  # no Hub dataset id was given: none is made up
    assert meta["license"] == "apache-2.0"
    assert meta["language"] == ["en"]

    [entry] = meta["model-index"]
    [result] = entry["results"]
    assert entry["name"] == "md2pr-tiny"
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
    plot.write_bytes(PNG)
    card = write_model_card(model_dir, METRICS, RunInfo.from_dict(RUN_INFO), plots=[plot], model_id="org/md2pr-tiny")
    _, body = _card(card)

    assert "arxiv.org/abs/2312.16821" in body and "Multi-level Distillation" in body
    assert 'model = SentenceTransformer("org/md2pr-tiny")' in body and "model.encode_query(" in body
    assert "| Teacher (cross-encoder) | [cross-encoder/ms-marco-MiniLM-L6-v2]" in body
    assert "| Student base (dual-encoder) | [sentence-transformers/all-MiniLM-L6-v2]" in body
    assert "| Training data | TREC RAG 2024, evaluated on split `test` |" in body
    assert "| Sentence-level weight `alpha` | 1.000000 |" in body
    assert "| Word-level weight `beta` | 0.250000 |" in body
    assert "| Temperature `teacher_temperature` | 2.0 |" in body
    assert "| Temperature `word_temperature` | 0.05 |" in body
    assert "<details><summary>Every other setting of the run</summary>" in body
    assert "| `learning_rate` | 2e-05 |" in body.split("<details><summary>Every other setting")[1]
    # Rounds: margin or threshold, candidates, flagged, filter rate (computed when missing), dev nDCG@10
    assert "| 1 | margin 1.5000 | 2,000 | 120 | 6.00% | 0.4000 |" in body
    assert "| 2 | threshold 7.2500 | 1,800 | 45 | 2.50% | 0.4300 |" in body
    # Results: before / after / teacher_rerank with the md2pr eval keys
    assert "| System | ndcg@10 | mrr@10 | recall@100 | map@100 | n_queries | corpus_size |" in body
    assert "| `before` | 0.3123 | 0.4012 | 0.6120 | 0.2101 | 60 | 6,011 |" in body
    assert "| `after` | 0.4123 | 0.5299 | 0.7123 | 0.3333 | 60 | 6,011 |" in body
    assert "| `teacher_rerank` | 0.5000 | 0.6100 | 0.7123 | 0.3500 | 60 | 6,011 |" in body
    # Plots are copied next to the card and linked relatively (works locally, in a copy and on the Hub)
    assert "![dev ndcg](plots/dev_ndcg.png)" in body
    assert (model_dir / "plots" / "dev_ndcg.png").read_bytes() == plot.read_bytes()
    assert "md2pr train --dataset rag24 --alpha 1.0 --beta 0.25" in body
    assert "## Limitations" in body and MS_MARCO_LINE in body and "non-commercial" in body
    assert MD2PR_CITATION.strip() in body and "Haifeng Li and Mo Hai and Dong Tang" in body
    # The host's sections: architecture, usage, framework versions
    for heading in ("## Model details", "### Full model architecture", "## Usage", "### Framework versions"):
        assert body.count(heading) == 1, heading
    assert "Pooling(" in body and "**Output dimensionality:** 32 dimensions" in body
    assert "- sentence_transformers: " in body and "- md2pr-st: " in body


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


def test_writing_again_gives_the_same_card_with_the_new_values(model_dir, tmp_path):
    plot = tmp_path / "rounds.png"
    plot.write_bytes(PNG)
    write_model_card(model_dir, METRICS, RUN_INFO, plots=[plot], model_id="org/first")
    plot.unlink()
    card = write_model_card(model_dir, model_id="org/second")  # run info, metrics and plots are kept
    meta, body = _card(card)

    for heading in ("## MD2PR training", "## Results", "## Usage", "### Full model architecture", "## Citation"):
        assert body.count(heading) == 1, heading
    assert 'SentenceTransformer("org/second")' in body and body.count("![rounds](plots/rounds.png)") == 1
    assert "sentence_transformers_model_id" not in body and "org/first" not in body
    assert "| `after` | 0.4123 |" in body and "| Word-level weight `beta` | 0.250000 |" in body
    assert len(meta["tags"]) == len(set(meta["tags"]))
    assert meta["model-index"][0]["name"] == "second"
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == METRICS["after"]["ndcg@10"]


def test_card_is_written_when_the_folder_has_no_readme(model_dir):
    (model_dir / "README.md").unlink()
    text = write_model_card(model_dir, METRICS, RUN_INFO).read_text(encoding="utf-8")
    assert "### Full model architecture" in text and "md2pr" in _front_matter(text)["tags"]


def test_tokens_in_the_command_are_redacted(model_dir):
    info = dict(RUN_INFO, command="md2pr train --hub_token hf_SECRETsecret1234567890abcdefXYZ --alpha 1")
    text = write_model_card(model_dir, METRICS, info).read_text(encoding="utf-8")
    assert "hf_SECRETsecret1234567890abcdefXYZ" not in text
    assert "md2pr train --hub_token hf_*** --alpha 1" in text
    assert "hf_SECRET" not in (model_dir / "md2pr_card_data.json").read_text()


def test_local_student_base_is_not_a_base_model(model_dir, tmp_path):
    info = dict(RUN_INFO, student_base=str(tmp_path), teacher=str(tmp_path))
    meta, body = _card(write_model_card(model_dir, {"after": METRICS["after"]}, info))
    assert "base_model" not in meta  # the Hub rejects a local path as base_model
    assert f"`{tmp_path.parent.name}/{tmp_path.name}` (a local folder)" in body
    assert str(tmp_path) not in body  # never the absolute path
    assert "| `after` |" in body and "| `before` |" not in body


def test_a_card_without_run_info_claims_nothing(model_dir):
    meta, body = _card(write_model_card(model_dir, None, None))
    assert "model-index" not in meta and "datasets" not in meta
    assert "No evaluation results were recorded" in body and "No mining rounds were recorded" in body
    assert "| Training data | not recorded |" in body and "| Teacher (cross-encoder) | not recorded |" in body
    assert "TREC RAG 2024" not in body and "MS MARCO" not in body


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
    with pytest.raises(ValueError, match="is a local folder, not a Hub dataset id"):
        write_model_card(model_dir, METRICS, RUN_INFO, dataset_ids=[str(tmp_path)])
    with pytest.raises(ValueError, match="is not a Hub dataset id"):
        RunInfo(datasets=["not a/valid/id"])


def _run_folder(tmp_path, model_path, run_info: dict) -> tuple:
    """A run folder as the pipeline writes it, with a round's filter-gaps histogram."""
    run = tmp_path / "run"
    shutil.copytree(model_path, run / "model")
    (run / "metrics.json").write_text(json.dumps(METRICS))
    (run / "run_info.json").write_text(json.dumps(run_info))
    for name in ("loss_parts.png", "rounds.png", "round_1/filter_gaps.png"):
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_bytes(PNG + name.encode())
    return run


def _pipeline_run_info(dataset: str, tmp_path) -> dict:
    """What md2pr_st.pipeline writes to run_info.json (local teacher, settings with absolute paths)."""
    return {
        "teacher": str(tmp_path / "run" / "teacher" / "model"),
        "teacher_report": {"dev_ndcg@10": 0.5},
        "student_base": "sentence-transformers/all-MiniLM-L6-v2",
        "alpha": 400.0,
        "beta": 0.0,
        "temperatures": {"student": 0.05, "teacher": 1.0, "word": 0.05, "contrastive_scale": 20.0},
        "rounds": [{"round": 1, "rule": "dynamic", "margin": 1.0, "candidates_scored": 80, "flagged": 8}],
        "command": "md2pr pipeline --dataset " + dataset,
        "dataset": dataset,
        "settings": {
            "output_dir": str(tmp_path / "run"),
            "model": None,
            "teacher": None,
            "rounds": 1,
            "batch_size": 16,
            "alpha": 400.0,
            "beta": 0.0,
            "student_temperature": 0.05,
            "cache_dir": str(tmp_path / "cache"),
            "teacher_base": str(tmp_path / "models" / "minilm"),
        },
        "seconds": 12.5,
        "timings": {"teacher": 3.0},
    }


@pytest.mark.parametrize("dataset", ["rag24", "scifact"])
def test_a_run_card_tells_the_truth(dataset, tiny_model_path, tmp_path):
    """A RAG24 run and a bring-your-own-data run (a BEIR folder named scifact): each point of a truthful card."""
    run = _run_folder(tmp_path, tiny_model_path, _pipeline_run_info(dataset, tmp_path))
    card = write_model_card(run / "model", run / "metrics.json", run / "run_info.json", plots=run_plots(run))
    meta, body = _card(card)
    rag24 = dataset == "rag24"

    # datasets: only Hub ids the user gave
    assert "datasets" not in meta
    assert ("TREC RAG 2024" in body) == rag24 and (
        rag24 or "| Training data | scifact, evaluated on split `test` |" in body
    )
    assert meta["model-index"][0]["results"][0]["dataset"]["name"] == ("TREC RAG 2024" if rag24 else "scifact")
    # The MS MARCO licence line only for RAG24's passages
    assert (MS_MARCO_LINE in body) == rag24
    # Provenance from the run
    assert "| Teacher (cross-encoder) | `teacher/model` (a local folder) |" in body
    assert (
        "| Sentence-level weight `alpha` | 400.000000 |" in body and "| Word-level weight `beta` | 0.000000 |" in body
    )
    # Settings folded, each once, nothing of the machine (output and cache folders), no absolute path
    settings = body.split("<details><summary>Every other setting of the run</summary>")[1].split("</details>")[0]
    names = [row.split("|")[1].strip() for row in _table_rows(settings)[1:]]
    assert names == ["`rounds`", "`batch_size`", "`teacher_base`", "`seconds`"]
    assert "| `teacher_base` | `models/minilm` |" in settings
    assert str(tmp_path) not in body and str(tmp_path) not in card.read_text()
    assert "| Sentence-level weight `alpha` |" not in settings and "`alpha`" not in settings
    # Every plot, the filter gaps of each round included, copied into the model folder and linked relatively
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", body)
    assert links == ["plots/loss_parts.png", "plots/rounds.png", "plots/round_1_filter_gaps.png"]
    assert all((run / "model" / link).is_file() for link in links)
    # With the user's Hub dataset id, and only then, `datasets:` lists it
    meta, _ = _card(write_model_card(run / "model", dataset_ids=["BeIR/scifact"]))
    assert meta["datasets"] == ["BeIR/scifact"]
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "BeIR/scifact"


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


def _train_with_the_host_trainer(model, tmp_path, loss):
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "checkpoints"),
        per_device_train_batch_size=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
    )
    SentenceTransformerTrainer(model=model, args=args, train_dataset=_rows_with_a_secret(), loss=loss).train()


def _assert_card_without_data(text: str) -> None:
    assert SECRET not in text and SECRET.lower() not in text.lower()
    meta = _front_matter(text)
    assert "widget" not in meta and "md2pr" in meta["tags"]
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == METRICS["after"]["ndcg@10"]
    assert 'model = SentenceTransformer("org/md2pr-tiny")' in text and "model.encode_query(" in text
    for section in ("### Full model architecture", "## Usage", "### Framework versions"):
        assert section in text, section


def test_card_of_a_trained_student_carries_no_training_text(tiny_model_path, tmp_path, one_torch_thread):
    from md2pr_st.config import LossArguments
    from md2pr_st.student import train_student

    no_distillation = LossArguments(alpha=0.0, beta=0.0)
    path, _ = train_student(
        tiny_model_path, _rows_with_a_secret(), tmp_path / "student", no_distillation, batch_size=2, device="cpu"
    )
    assert SECRET not in (path / "README.md").read_text(encoding="utf-8")  # the card saved after training
    card = write_model_card(path, METRICS, RUN_INFO, model_id="org/md2pr-tiny")
    _assert_card_without_data(card.read_text(encoding="utf-8"))


def test_card_of_a_host_trained_model_quotes_none_of_its_data(tiny_model_path, tmp_path, one_torch_thread):
    """A student trained with the host's card data: its own card quotes the data in three places; the MD2PR card
    is rendered from card data, not from that README, and quotes none."""
    from sentence_transformers import SentenceTransformer

    from md2pr_st.losses import MD2PRLoss

    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    _train_with_the_host_trainer(model, tmp_path, MD2PRLoss(model, alpha=0.0, beta=0.0, false_negative_margin=None))
    model.save(str(tmp_path / "student"))
    host = (tmp_path / "student" / "README.md").read_text(encoding="utf-8")
    assert SECRET in str(_front_matter(host)["widget"])
    assert SECRET in host.split("* Samples:")[1].split("* Loss:")[0]
    assert SECRET in host.split("```python")[1].split("```")[0]

    card = write_model_card(tmp_path / "student", METRICS, RUN_INFO, model_id="org/md2pr-tiny")
    _assert_card_without_data(card.read_text(encoding="utf-8"))


def test_card_data_on_the_trained_model(tiny_model_path, tiny_cross_encoder_path, tmp_path, one_torch_thread):
    """MD2PRModelCardData given to a model before training: the trainer's record (datasets, loss, hyperparameters,
    logs) without any data text, provenance from the loss's config, and a card that survives saving elsewhere."""
    from sentence_transformers import SentenceTransformer

    from md2pr_st.hub.run_info import short_path
    from md2pr_st.losses import MD2PRLoss

    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    card_data = use_md2pr_card_data(model, model_id="org/md2pr-tiny")
    assert model.model_card_data is card_data and card_data.model is model
    loss = MD2PRLoss(model, teacher=str(tiny_cross_encoder_path), alpha=0.5, beta=0.0, false_negative_margin=None)
    _train_with_the_host_trainer(model, tmp_path, loss)
    model.save(str(tmp_path / "student"))
    text = (tmp_path / "student" / "README.md").read_text(encoding="utf-8")
    assert SECRET not in text and "widget" not in _front_matter(text)
    # Teacher, alpha and beta from the loss's config, with no run info given
    assert f"| Teacher (cross-encoder) | `{short_path(tiny_cross_encoder_path)}` (a local folder) |" in text
    assert "| Sentence-level weight `alpha` | 0.500000 |" in text and "| Word-level weight `beta` | 0.000000 |" in text
    assert "| Training data | not recorded |" in text
    assert str(tiny_cross_encoder_path) not in text  # the loss's config shows the teacher's folder shortened
    assert str(tmp_path) not in (tmp_path / "student" / "md2pr_card_data.json").read_text()

    # Rendered again from the folder once the run is evaluated: the trainer's record is kept
    plot = tmp_path / "loss_parts.png"
    plot.write_bytes(PNG)
    card = write_model_card(
        tmp_path / "student", METRICS, {"dataset": "scifact"}, plots=[plot], model_id="org/md2pr-tiny"
    )
    text = card.read_text(encoding="utf-8")
    _assert_card_without_data(text)
    assert "### Training dataset" in text and "* Size: 6 training samples" in text
    assert "<code>positive</code>" in text and "max: " in text  # columns and token statistics stay
    assert '"alpha": 0.5' in text and "### Training hyperparameters" in text and "### Training logs" in text
    assert {"generated_from_trainer", "loss:MD2PRLoss"} <= set(_front_matter(text)["tags"])
    assert "| Sentence-level weight `alpha` | 0.500000 |" in text and "| Training data | scifact, evaluated" in text

    # Saved elsewhere, from the trained model in memory or loaded with its card data: the card keeps its plots
    card_data.set_run({"dataset": "scifact"}, METRICS, [plot])
    model.save(str(tmp_path / "copy"))
    folder = tmp_path / "student"
    loaded = SentenceTransformer(str(folder), device="cpu", model_card_data=MD2PRModelCardData.from_folder(folder))
    loaded.save(str(tmp_path / "copy_of_loaded"))
    for target in ("copy", "copy_of_loaded"):
        copied = (tmp_path / target / "README.md").read_text(encoding="utf-8")
        assert "![loss parts](plots/loss_parts.png)" in copied
        assert (tmp_path / target / "plots" / "loss_parts.png").read_bytes() == PNG
        assert "* Size: 6 training samples" in copied and "| `after` | 0.4123 |" in copied
        assert SECRET not in copied
