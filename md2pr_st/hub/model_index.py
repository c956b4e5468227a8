"""The Hub's ``model-index``: a card's retrieval results in the machine-readable form the Hub lists."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from huggingface_hub.repocard_data import EvalResult, eval_results_to_model_index

__all__ = ["MODEL_INDEX_METRICS", "build_model_index"]

# metrics.json key -> model-index metric type (the Hub's naming, as in MTEB cards)
MODEL_INDEX_METRICS = {
    "ndcg@10": "ndcg_at_10",
    "mrr@10": "mrr_at_10",
    "recall@100": "recall_at_100",
    "map@100": "map_at_100",
}


def build_model_index(
    metrics_after: Mapping[str, Any], model_name: str, dataset: str, dataset_type: str, split: str
) -> list[dict[str, Any]]:
    """The Hub ``model-index`` for the retrieval results of ``metrics_after`` (values kept exactly).

    Example:
        >>> index = build_model_index({"ndcg@10": 0.5, "mrr@10": 0.25, "n_queries": 3}, "m", "TREC RAG 2024",
        ...                           "trec-rag-2024", "test")
        >>> [(m["type"], m["value"]) for m in index[0]["results"][0]["metrics"]]
        [('ndcg_at_10', 0.5), ('mrr_at_10', 0.25)]
        >>> index[0]["results"][0]["dataset"]
        {'name': 'TREC RAG 2024', 'type': 'trec-rag-2024', 'split': 'test'}
    """
    names = {"ndcg": "nDCG", "mrr": "MRR", "recall": "Recall", "map": "MAP"}
    results = [
        EvalResult(
            task_type="retrieval",
            task_name="Retrieval",
            dataset_type=dataset_type,
            dataset_name=dataset,
            dataset_split=split,
            metric_type=metric_type,
            metric_name=names[key.split("@")[0]] + "@" + key.split("@")[1],
            metric_value=float(metrics_after[key]),
        )
        for key, metric_type in MODEL_INDEX_METRICS.items()
        if metrics_after.get(key) is not None
    ]
    return eval_results_to_model_index(model_name, results) if results else []
