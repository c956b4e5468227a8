"""The MD2PR pipeline: teacher -> rounds of (mine, filter, train, evaluate) -> test report, card, plots.

Stages and what each writes into the run folder (every stage writes its outputs, then a ``stage.json`` manifest,
atomically; a stage whose manifest exists with the same settings is skipped when the command is run again, and
student training resumes from its last checkpoint)::

    run/
      teacher/                     stage 0: the cross-encoder (trained, or a given Hub id / folder recorded)
      embeddings/                  corpus embeddings per student, shared by mining and evaluation
      round_1/mined/               hard negatives mined with the current student (datasets folder)
      round_1/filtered/            false negatives dropped, teacher logits in `scores`
      round_1/filter_stats.json    + filter_gaps.png: threshold and counts of the round
      round_1/student/             the student after the round (a plain sentence-transformers folder)
      round_1/dev.json             dev metrics after the round
      ...
      model/                       the final student, with its model card and plots
      metrics.json                 before / after / teacher_rerank on the test split
      run_info.json                settings, per-round statistics, the command
      *.png                        loss parts per step, dev nDCG@10 per round, threshold per round

Each stage is a function that takes and returns paths or ``datasets`` objects (:func:`train_student`,
:func:`teacher_rerank`); :func:`run_pipeline` composes them and the CLI only parses options.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from datasets import Dataset, load_from_disk

from md2pr_st.data import RetrievalData
from md2pr_st.evaluation import evaluate_run, format_table
from md2pr_st.utils import atomic_path, fingerprint, last_complete_checkpoint, write_json

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

REPORT_METRICS = ("ndcg@10", "mrr@10", "recall@100", "map@100", "judged@10")
STAGE_FILE = "stage.json"


# --------------------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LossArguments:
    """Weights and temperatures of ``L = L_c + alpha * L_s + beta * L_w`` (see :class:`~md2pr_st.losses.MD2PRLoss`),
    shared by ``md2pr train`` and ``md2pr pipeline``."""

    alpha: float = dataclasses.field(default=1.0, metadata={"help": "Weight of the sentence-level loss."})
    beta: float = dataclasses.field(default=1.0, metadata={"help": "Weight of the word-level loss."})
    scale: float = dataclasses.field(default=20.0, metadata={"help": "1 / tau of the contrastive loss."})
    student_temperature: float = dataclasses.field(default=0.05, metadata={"help": "T_s of the sentence level."})
    teacher_temperature: float = dataclasses.field(default=1.0, metadata={"help": "T_t of the sentence level."})
    word_temperature: float = dataclasses.field(default=0.05, metadata={"help": "tau_w of the word level."})


@dataclasses.dataclass
class PipelineArguments:
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
        default=1e-4, metadata={"help": "Teacher learning rate (its one-logit head starts from scratch)."}
    )
    teacher_max_length: int = dataclasses.field(default=192, metadata={"help": "Teacher max tokens per pair."})
    teacher_max_pairs: int | None = dataclasses.field(
        default=None, metadata={"help": "Train the teacher on at most this many pairs (bounds CPU time)."}
    )
    teacher_random_negatives: int = dataclasses.field(
        default=2, metadata={"help": "Label-0 corpus passages per query in teacher training."}
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
        default="dynamic",
        metadata={"help": "False-negative rule: 'dynamic' only here (fixed rules: md2pr filter, then md2pr train)."},
    )
    filter_quantile: float = dataclasses.field(
        default=0.1, metadata={"help": "Dynamic rule: m_r is this quantile of the round's teacher gaps."}
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

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}.")
        if self.mine_candidates < self.num_negatives:
            raise ValueError(
                f"mine_candidates ({self.mine_candidates}) must be >= num_negatives ({self.num_negatives}): the "
                "filter refills rows from the mined candidates."
            )
        if self.sentence_scores not in ("teacher", "qrels"):
            raise ValueError(f"sentence_scores must be 'teacher' or 'qrels', got {self.sentence_scores!r}.")
        if self.filter_rule != "dynamic":
            raise ValueError(
                f"md2pr pipeline re-estimates the threshold every round (filter_rule='dynamic'); got "
                f"{self.filter_rule!r}. For a fixed rule, run the stages alone: md2pr filter --rule ... then md2pr train."
            )
        from md2pr_st.mining import _positives_per_query

        _positives_per_query(self.positives)  # fails now, not after the teacher has trained
        if self.sampling not in ("top", "random"):
            raise ValueError(f"sampling must be 'top' or 'random', got {self.sampling!r}.")


@dataclasses.dataclass
class DemoArguments(PipelineArguments):
    """Options of ``md2pr demo``: the pipeline on the embedded default (all-MiniLM-L6-v2, RAG24), sized for 2 CPU
    cores. Every option of ``md2pr pipeline`` can still be given."""

    output_dir: str = dataclasses.field(default="runs/demo", metadata={"help": "The run folder."})
    teacher_max_length: int = dataclasses.field(default=128, metadata={"help": "Teacher max tokens per pair."})
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
    """The demo's loss weights: ``L_s`` is scaled by ``T_s^2``, so ``alpha = 1 / T_s^2 = 400`` weighs it like
    ``L_c``; no word level (see ``beta``)."""

    alpha: float = dataclasses.field(default=400.0, metadata={"help": "Weight of the sentence-level loss."})
    beta: float = dataclasses.field(
        default=0.0,
        metadata={
            "help": "Weight of the word-level loss. 0 in the demo: the cross-encoder trainable here in minutes is "
            "weaker than the student, and its attention cost test nDCG@10 (BENCHMARKS.md); give a real "
            "cross-encoder with --teacher and set beta > 0."
        },
    )


# --------------------------------------------------------------------------------------------------------------
# Stage bookkeeping
# --------------------------------------------------------------------------------------------------------------


class Stage:
    """A pipeline stage's folder with its manifest: ``done`` iff ``stage.json`` exists with the same settings."""

    def __init__(self, folder: str | Path, settings: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.settings = json.loads(json.dumps(settings, default=str))
        self.key = fingerprint([json.dumps(self.settings, sort_keys=True)])

    @property
    def manifest(self) -> dict[str, Any] | None:
        path = self.folder / STAGE_FILE
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except json.JSONDecodeError:
            return None

    @property
    def done(self) -> bool:
        manifest = self.manifest
        return manifest is not None and manifest.get("key") == self.key

    def start(self, partial: Sequence[str | Path] = ()) -> None:
        """Begin (or resume) the stage: if the partial outputs on disk (``partial``: checkpoints, a half-trained
        model) were started under other settings, delete them so they are not resumed; then record this key."""
        pending = self.folder / "stage.pending.json"
        try:
            started = json.loads(pending.read_text(encoding="utf-8")).get("key") if pending.is_file() else None
        except json.JSONDecodeError:
            started = None
        if started != self.key:
            for path in partial:
                if Path(path).exists():
                    logger.info("Settings changed since %s was started: removing %s", self.folder, path)
                    shutil.rmtree(path, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(pending, {"key": self.key, "settings": self.settings})

    def finish(self, outputs: dict[str, Any] | None = None, seconds: float | None = None) -> dict[str, Any]:
        manifest = {"key": self.key, "settings": self.settings, "outputs": outputs or {}, "seconds": seconds}
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(self.folder / STAGE_FILE, manifest)
        return manifest


class QrelsScorer:
    """Graded judgements as a teacher: ``score([(query, passage), ...])`` returns each pair's qrels grade.

    ``g(q, d)`` is the grade ``data.qrels`` gives passage ``d`` for query ``q`` (matched by text: the highest grade
    of any corpus passage with that text) and 0 for a passage the query's qrels do not judge. It has the scorer
    interface of :class:`~md2pr_st.teacher.Teacher`, so :class:`~md2pr_st.false_negatives.FalseNegativeFilter`
    flags false negatives and writes the ``scores`` column from it: offline teacher scores for
    :class:`~md2pr_st.losses.MD2PRLoss`'s sentence level when the judgements come from a stronger model than any
    cross-encoder at hand (RAG24's UMBRELA grades are GPT-4o's).

    Example:
        >>> from md2pr_st.data import RetrievalData
        >>> data = RetrievalData(
        ...     corpus=Dataset.from_dict({"id": ["a", "b", "c"], "text": ["Paris.", "Lyon.", "Tea."]}),
        ...     queries=Dataset.from_dict({"id": ["q"], "text": ["capital of france"]}),
        ...     qrels={"q": {"a": 3, "b": 1}},
        ... )
        >>> QrelsScorer(data).score([("capital of france", "Paris."), ("capital of france", "Tea.")]).tolist()
        [3.0, 0.0]
    """

    def __init__(self, data: RetrievalData) -> None:
        text_of = dict(zip(data.corpus["id"], data.corpus["text"]))
        self.name = data.name
        self.model_name = f"qrels of {data.name}"
        self._query_id = {text: qid for qid, text in zip(data.queries["id"], data.queries["text"])}
        self._grade: dict[tuple[str, str], float] = {}
        for qid, docs in data.qrels.items():
            for doc_id, grade in docs.items():
                key = (qid, text_of[doc_id])
                self._grade[key] = max(self._grade.get(key, float("-inf")), float(grade))

    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 0, show_progress_bar: bool = False):
        unknown = sorted({q for q, _ in pairs if q not in self._query_id})
        if unknown:
            raise ValueError(
                f"{len(unknown)} queries are not in {self.name}'s queries (e.g. {unknown[0][:60]!r}), so their grades "
                "are unknown. Score data without judgements with a cross-encoder (sentence_scores='teacher')."
            )
        return np.array([self._grade.get((self._query_id[q], d), 0.0) for q, d in pairs], dtype=np.float64)


def save_dataset(dataset: Dataset, folder: str | Path) -> Path:
    """``Dataset.save_to_disk`` into ``folder`` atomically."""
    with atomic_path(folder, is_dir=True) as tmp:
        dataset.save_to_disk(str(tmp))
    return Path(folder)


# --------------------------------------------------------------------------------------------------------------
# Stages usable alone
# --------------------------------------------------------------------------------------------------------------


def train_student(
    model: str | Path | SentenceTransformer,
    train_dataset: Dataset,
    output_dir: str | Path,
    *,
    teacher: Any = None,
    alpha: float = 1.0,
    beta: float = 1.0,
    scale: float = 20.0,
    student_temperature: float = 0.05,
    teacher_temperature: float = 1.0,
    word_temperature: float = 0.05,
    false_negative_margin: float | None = None,
    epochs: float = 1.0,
    batch_size: int = 16,
    learning_rate: float = 2e-5,
    max_seq_length: int | None = None,
    save_steps: int = 20,
    seed: int = 13,
    device: str | None = None,
    evaluator: Any = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Train a student with :class:`~md2pr_st.losses.MD2PRLoss` on ``(query, positive, negative_1..n[, scores])``.

    ``L = L_c + alpha * L_s + beta * L_w`` (see :class:`~md2pr_st.losses.MD2PRLoss`). Uses the host's
    ``SentenceTransformerTrainer`` with ``BatchSamplers.NO_DUPLICATES`` (so an in-batch negative is never a copy of
    a row's own positive). Checkpoints go to ``output_dir + ".checkpoints"``; an interrupted run resumes from the
    last one. The trained model is saved atomically to ``output_dir``.

    Returns:
        ``(path, log_history)``: the saved model folder and the trainer's log entries (loss parts per step).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from md2pr_st.losses import MD2PRLoss
    from md2pr_st.model_card import remove_dataset_texts
    from md2pr_st.models import resolve_model_name

    output_dir = Path(output_dir)
    if not isinstance(model, SentenceTransformer):
        model = SentenceTransformer(resolve_model_name(model), device=device)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    loss = MD2PRLoss(
        model,
        teacher=teacher,
        alpha=alpha,
        beta=beta,
        scale=scale,
        student_temperature=student_temperature,
        teacher_temperature=teacher_temperature,
        word_temperature=word_temperature,
        false_negative_margin=false_negative_margin,
    )
    checkpoints = output_dir.with_name(output_dir.name + ".checkpoints")
    steps_per_epoch = max(1, len(train_dataset) // batch_size)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=0.1,
        seed=seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=1,
        logging_steps=max(1, min(5, steps_per_epoch // 4)),
        report_to=[],
        use_cpu=device == "cpu",
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train_dataset, loss=loss, evaluator=evaluator
    )
    remove_dataset_texts(model.model_card_data)  # the saved card must not quote the data (MS MARCO terms)
    resume = last_complete_checkpoint(checkpoints)
    if resume:
        logger.info("Resuming student training from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    with atomic_path(output_dir, is_dir=True) as tmp:
        model.save(str(tmp))
    shutil.rmtree(checkpoints, ignore_errors=True)
    return output_dir, list(trainer.state.log_history)


def teacher_rerank(
    teacher: Any,
    data: RetrievalData,
    run: dict[str, dict[str, float]],
    k: int = 20,
    metrics: Sequence[str] = REPORT_METRICS,
    relevance_cut: int = 2,
) -> dict[str, Any]:
    """The teacher reranks the student's top-``k`` of each query; ranks below ``k`` keep the student's order.

    A ceiling for distillation: what the student would score if it ranked its own top-k like the teacher.
    ``run`` is the student's ``{query_id: {doc_id: score}}``.
    """
    texts = dict(zip(data.corpus["id"], data.corpus["text"]))
    queries = dict(zip(data.queries["id"], data.queries["text"]))
    ranked_ids = {q: sorted(docs, key=docs.__getitem__, reverse=True) for q, docs in run.items()}
    pairs = [(queries[q], texts[d]) for q, ids in ranked_ids.items() for d in ids[:k]]
    logits = np.asarray(teacher.score(pairs, show_progress_bar=True), dtype=np.float64)
    reranked: dict[str, dict[str, float]] = {}
    offset = 0
    for q, ids in ranked_ids.items():
        head = ids[:k]
        top = logits[offset : offset + len(head)]
        offset += len(head)
        # Reranked head above everything else: shift the teacher's logits above the tail's ranks.
        ranked = {d: 1e6 + float(s) for d, s in zip(head, top)}
        ranked.update({d: float(len(ids) - i) for i, d in enumerate(ids[k:])})
        reranked[q] = ranked
    result = evaluate_run(reranked, data.qrels, metrics, relevance_cut)
    result["corpus_size"] = len(data.corpus)
    result["rerank_k"] = k
    return result


@dataclasses.dataclass
class TeacherArguments:
    """Options of ``md2pr teacher`` (stage 0 alone)."""

    output_dir: str = dataclasses.field(default="runs/teacher", metadata={"help": "Where the teacher is saved."})
    base_model: str | None = dataclasses.field(
        default=None, metadata={"help": "Backbone or cross-encoder to start from (default: embedded MiniLM)."}
    )
    student: str | None = dataclasses.field(
        default=None, metadata={"help": "Student for the teacher-vs-student dev gap (default: embedded MiniLM)."}
    )
    max_length: int = dataclasses.field(default=192, metadata={"help": "Max tokens per (query, passage) pair."})
    epochs: float = dataclasses.field(default=1.0, metadata={"help": "Training epochs."})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "Training batch size."})
    learning_rate: float = dataclasses.field(
        default=1e-4, metadata={"help": "Learning rate (the one-logit head starts from scratch)."}
    )
    random_negatives: int = dataclasses.field(default=2, metadata={"help": "Label-0 corpus passages per query."})
    max_pairs: int | None = dataclasses.field(default=None, metadata={"help": "Train on at most this many pairs."})
    seed: int = dataclasses.field(default=13, metadata={"help": "Seed."})
    overwrite: bool = dataclasses.field(default=False, metadata={"help": "Retrain even if a teacher is there."})
    device: str | None = dataclasses.field(default=None, metadata={"help": "cpu, cuda, ... (default: auto)."})


def run_teacher_stage(data_args: Any, args: TeacherArguments) -> dict[str, Any]:
    """Train the teacher on the train split and report the teacher-vs-student nDCG@10 gap on dev."""
    from md2pr_st.teacher_training import TEACHER_REPORT, train_teacher

    train = dataclasses.replace(data_args, split="train").load()
    dev = dataclasses.replace(data_args, split="dev").load()
    path = train_teacher(
        train,
        args.output_dir,
        base_model=args.base_model,
        dev=dev,
        student=args.student,
        max_length=args.max_length,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        random_negatives=args.random_negatives,
        max_pairs=args.max_pairs,
        seed=args.seed,
        device=args.device,
        overwrite=args.overwrite,
    )
    report = json.loads((Path(path) / TEACHER_REPORT).read_text(encoding="utf-8"))
    gap = report.get("dev", {})
    if gap:
        print(
            f"Teacher {path}: dev {gap['metric']} reranking the judged pools: teacher {gap['teacher']:.4f}, "
            f"student {gap['student']:.4f}, gap {gap['gap']:+.4f}"
        )
    return report


@dataclasses.dataclass
class TrainArguments:
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
    teacher_max_length: int = dataclasses.field(default=192, metadata={"help": "Teacher max tokens per pair."})
    false_negative_margin: float | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Mask hard negatives with t(q,d) >= t(q,d+) - margin in L_c (default: the margin of an input "
            "filtered with md2pr filter --action mask, else no mask)."
        },
    )
    epochs: float = dataclasses.field(default=1.0, metadata={"help": "Epochs."})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "Batch size."})
    learning_rate: float = dataclasses.field(default=2e-5, metadata={"help": "Learning rate."})
    max_seq_length: int | None = dataclasses.field(default=None, metadata={"help": "Student max tokens."})
    seed: int = dataclasses.field(default=13, metadata={"help": "Seed."})
    device: str | None = dataclasses.field(default=None, metadata={"help": "cpu, cuda, ... (default: auto)."})


def run_train_stage(args: TrainArguments, loss_args: LossArguments | None = None) -> Path:
    """Train a student with MD2PRLoss on a filtered dataset folder (resumes from its last checkpoint)."""
    from md2pr_st.teacher import Teacher

    folder = Path(args.input)
    if not (folder / "dataset_info.json").is_file() and not (folder / "state.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a `datasets` folder (save_to_disk). Make one with `md2pr mine` and `md2pr filter`."
        )
    dataset = load_from_disk(str(folder))
    loss_args = loss_args or LossArguments()
    if loss_args.beta > 0 and args.teacher is None:
        raise ValueError("The word-level loss (beta > 0) needs an online teacher: pass --teacher, or --beta 0.")
    teacher = Teacher(args.teacher, max_length=args.teacher_max_length, device=args.device) if args.teacher else None
    margin = args.false_negative_margin
    stats_file = folder / "md2pr_filter.json"  # written by md2pr filter
    if margin is None and stats_file.is_file():
        last = (json.loads(stats_file.read_text(encoding="utf-8")).get("rounds") or [{}])[-1]
        if last.get("action") == "mask" and last.get("margin") is not None:
            margin = float(last["margin"])
            print(f"{folder} was filtered with action='mask': masking with its margin {margin:g} in L_c")
    path, _ = train_student(
        args.model,
        dataset,
        args.output_dir,
        teacher=teacher,
        **dataclasses.asdict(loss_args),
        false_negative_margin=margin,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_seq_length=args.max_seq_length,
        seed=args.seed,
        device=args.device,
    )
    print(f"Saved the student to {path}")
    return path


# --------------------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------------------


def _load_splits(data_args: Any) -> dict[str, RetrievalData]:
    splits = {}
    for split in ("train", "dev", "test"):
        data_args = dataclasses.replace(data_args, split=split)
        splits[split] = data_args.load()
    return splits


def _evaluate(model, data: RetrievalData, cache) -> tuple[dict, dict[str, dict[str, float]]]:
    """Student retrieval on ``data`` with the corpus embeddings from ``cache``: ``(result, run)``."""
    from md2pr_st.evaluation import RetrievalEvaluator

    return RetrievalEvaluator(data, REPORT_METRICS).evaluate(model, index=cache.build_index())


def run_pipeline(
    args: PipelineArguments, data_args: Any, command: str | None = None, loss_args: LossArguments | None = None
) -> dict[str, Any]:
    """Run (or resume) the whole MD2PR pipeline; returns the ``metrics.json`` content.

    Example:
        >>> from md2pr_st.cli import DataArguments
        >>> metrics = run_pipeline(PipelineArguments(output_dir="runs/x"), DataArguments())  # doctest: +SKIP
        >>> metrics["after"]["ndcg@10"] > metrics["before"]["ndcg@10"]  # doctest: +SKIP
    """
    from sentence_transformers import SentenceTransformer

    from md2pr_st.false_negatives import FalseNegativeFilter
    from md2pr_st.mining import CorpusEmbeddingCache, mine_hard_negatives, training_pairs
    from md2pr_st.models import resolve_model_name
    from md2pr_st.teacher import Teacher
    from md2pr_st.teacher_training import train_teacher

    start = time.perf_counter()
    loss_args = loss_args or LossArguments()
    run_dir = Path(args.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    splits = _load_splits(data_args)
    data_key = (
        {k: v for k, v in dataclasses.asdict(data_args).items() if k not in ("split", "cache_dir", "sdist")}
        if dataclasses.is_dataclass(data_args)
        else repr(data_args)
    )
    corpus = splits["train"].corpus
    embeddings_dir = run_dir / "embeddings"
    student_name = resolve_model_name(args.model)
    timings: dict[str, float] = {}

    def load_student(path: str) -> SentenceTransformer:
        model = SentenceTransformer(path, device=args.device)
        if args.max_seq_length:
            model.max_seq_length = args.max_seq_length
        return model

    def cache_for(model: SentenceTransformer) -> CorpusEmbeddingCache:
        return CorpusEmbeddingCache(model, corpus, embeddings_dir, show_progress_bar=True)

    # Stage 0: the teacher.
    t0 = time.perf_counter()
    teacher_stage = Stage(
        run_dir / "teacher",
        {"teacher": args.teacher, "base": args.teacher_base, "epochs": args.teacher_epochs,
         "learning_rate": args.teacher_learning_rate,
         "max_length": args.teacher_max_length, "max_pairs": args.teacher_max_pairs,
         "random_negatives": args.teacher_random_negatives, "seed": args.seed, "data": data_key},
    )  # fmt: skip
    if args.teacher:
        teacher_path = args.teacher
        if not teacher_stage.done:
            teacher_stage.finish({"teacher": teacher_path, "trained": False})
    elif teacher_stage.done:
        teacher_path = teacher_stage.manifest["outputs"]["teacher"]
    else:
        print("Stage 0: training the teacher cross-encoder", file=sys.stderr, flush=True)
        teacher_stage.start(partial=[run_dir / "teacher" / "model.checkpoints"])
        teacher_path = str(
            train_teacher(
                splits["train"],
                run_dir / "teacher" / "model",
                base_model=args.teacher_base,
                dev=splits["dev"],
                student=student_name,
                max_length=args.teacher_max_length,
                epochs=args.teacher_epochs,
                learning_rate=args.teacher_learning_rate,
                random_negatives=args.teacher_random_negatives,
                max_pairs=args.teacher_max_pairs,
                seed=args.seed,
                device=args.device,
                overwrite=True,  # the stage is not done under these settings: a teacher on disk is another one
            )
        )
        teacher_stage.finish({"teacher": teacher_path, "trained": True})
    timings["teacher"] = time.perf_counter() - t0
    teacher = Teacher(teacher_path, max_length=args.teacher_max_length, device=args.device)
    teacher_report_path = Path(teacher_path) / "md2pr_teacher.json"
    teacher_report = json.loads(teacher_report_path.read_text()) if teacher_report_path.is_file() else {}

    # Before: the off-the-shelf student on test.
    student = load_student(student_name)
    before_stage = Stage(
        run_dir / "before",
        {
            "student": student_name,
            "max_seq_length": args.max_seq_length,
            "data": data_key,
            "metrics": REPORT_METRICS,
            "splits": ["test", "dev"],
        },
    )
    t0 = time.perf_counter()
    if before_stage.done:
        before, before_dev = before_stage.manifest["outputs"]["test"], before_stage.manifest["outputs"]["dev"]
    else:
        cache = cache_for(student)  # one corpus encoding for both splits (and for round 1's mining)
        before, _ = _evaluate(student, splits["test"], cache)
        before_dev, _ = _evaluate(student, splits["dev"], cache)
        before_stage.finish({"test": before, "dev": before_dev})
    timings["before"] = time.perf_counter() - t0

    pairs = training_pairs(
        splits["train"], min_grade=args.min_grade, positives=args.positives, skip_queries_without_positive=True
    )
    rounds: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    # The teacher scores of L_s and the filter: the cross-encoder (flagged candidates dropped and refilled), or the
    # graded judgements (flagged candidates kept for L_s and masked out of L_c by the loss).
    graded = args.sentence_scores == "qrels"
    filter_ = FalseNegativeFilter(
        QrelsScorer(splits["train"]) if graded else teacher,
        rule=args.filter_rule,
        quantile=args.filter_quantile,
        num_negatives=args.num_negatives,
        action="mask" if graded else "drop",
        # Grades: never let m_r reach the lowest positive grade, or the threshold t(q, d+) - m_r would sink to 0
        # and flag grade-0 and unjudged candidates, leaving L_c without a negative.
        max_margin=args.min_grade - 0.5 if graded else None,
    )
    current = student_name
    for r in range(1, args.rounds + 1):
        round_dir = run_dir / f"round_{r}"
        settings = {**dataclasses.asdict(args), **dataclasses.asdict(loss_args)}
        settings.update(round=r, student=current, teacher=teacher_path, data=data_key, metrics=REPORT_METRICS)
        settings.pop("output_dir"), settings.pop("device")
        stage = Stage(round_dir, settings)
        if stage.done:
            info = stage.manifest["outputs"]
            rounds.append(info)
            history.extend(info.get("log_history", []))
            filter_.load_statistics(round_dir / "filter_stats.json")
            current = str(round_dir / "student")
            continue
        print(f"Round {r}/{args.rounds}: mine, filter, train, evaluate", file=sys.stderr, flush=True)
        stage.start(partial=[round_dir / "student.checkpoints"])
        t0 = time.perf_counter()
        model = student if current == student_name else load_student(current)  # trained in place below
        mined = mine_hard_negatives(
            pairs,
            corpus,
            model,
            num_negatives=args.mine_candidates,
            range_min=args.range_min,
            range_max=args.range_max,
            sampling=args.sampling,
            seed=args.seed + r,
            cache_dir=embeddings_dir,
            show_progress_bar=True,
        )
        filtered = filter_.apply(mined)
        save_dataset(filtered, round_dir / "filtered")
        filter_.save_statistics(round_dir / "filter_stats.json")
        filter_.plot(round_dir / "filter_gaps.png")
        stats = filter_.statistics["rounds"][-1]
        mined_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        path, log_history = train_student(
            model,
            load_from_disk(str(round_dir / "filtered")),
            round_dir / "student",
            teacher=teacher if loss_args.beta > 0 else None,
            **dataclasses.asdict(loss_args),
            # Dropped candidates are gone; masked ones (graded scores) are left out of L_c by the same rule.
            false_negative_margin=stats.get("margin"),
            epochs=args.epochs_per_round,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            max_seq_length=args.max_seq_length,
            save_steps=args.save_steps,
            seed=args.seed + r,
            device=args.device,
        )
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        trained = load_student(str(path))
        dev, _ = _evaluate(trained, splits["dev"], cache_for(trained))
        write_json(round_dir / "dev.json", dev)
        for entry in log_history:
            entry["round"] = r
        info = {
            "round": r,
            "rows": len(filtered),
            "filter": stats,
            "dev": dev,
            "log_history": log_history,
            "seconds": {"mine_filter": mined_s, "train": train_s, "eval": time.perf_counter() - t0},
        }
        stage.finish(info)
        rounds.append(info)
        history.extend(log_history)
        current = str(path)

    # After: the trained student on test, and the teacher reranking its top-k.
    final = load_student(current)
    after, run = _evaluate(final, splits["test"], cache_for(final))
    rerank = teacher_rerank(teacher, splits["test"], run, args.rerank_k)
    metrics = {"before": before, "after": after, "teacher_rerank": rerank}
    with atomic_path(run_dir / "model", is_dir=True) as tmp:
        final.save(str(tmp))
    write_json(run_dir / "metrics.json", metrics)
    plots = plot_run(run_dir, rounds, history, before_dev)
    run_info = {
        "teacher": teacher_path,
        "teacher_report": teacher_report,
        "student_base": args.model or "sentence-transformers/all-MiniLM-L6-v2",
        "alpha": loss_args.alpha,
        "beta": loss_args.beta,
        "temperatures": {
            "student": loss_args.student_temperature,
            "teacher": loss_args.teacher_temperature,
            "word": loss_args.word_temperature,
            "contrastive_scale": loss_args.scale,
        },
        "rounds": [
            {
                "round": info["round"],
                "rule": info["filter"].get("rule"),
                "margin": info["filter"].get("margin"),
                "candidates_scored": info["filter"].get("candidates_scored"),
                "flagged": info["filter"].get("flagged"),
                "flagged_fraction": info["filter"].get("flagged_fraction"),
                "dev_ndcg@10": info["dev"]["ndcg@10"],
            }
            for info in rounds
        ],
        "command": command or "md2pr pipeline",
        # The data's name without the split suffix (the card says which split each number is on).
        "dataset": splits["test"].name.removesuffix("-test"),
        "settings": {**dataclasses.asdict(args), **dataclasses.asdict(loss_args)},
        "seconds": round(time.perf_counter() - start, 1),
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    run_info["dev_ndcg@10_before"] = before_dev["ndcg@10"]
    if graded:  # listed in the card's settings next to the cross-encoder, which teaches the word level
        run_info["sentence_level_teacher"] = f"graded judgements of {splits['train'].name} (qrels)"
    write_json(run_dir / "run_info.json", run_info)
    try:
        from md2pr_st.model_card import write_model_card

        write_model_card(run_dir / "model", metrics, run_info, plots=plots)
    except Exception as exc:  # the model is saved either way; a card problem must not lose the run
        logger.warning("Could not write the model card: %s", exc)
    print(format_table({"before (student)": before, "after (MD2PR)": after,
                        f"teacher rerank@{args.rerank_k}": rerank}, REPORT_METRICS))  # fmt: skip
    print(f"{splits['test'].name}: {after['n_queries']} queries, corpus {after['corpus_size']:,}; "
          f"{run_info['seconds']:.0f} s; run folder {run_dir}")  # fmt: skip
    return metrics


def plot_run(run_dir: Path, rounds: list[dict], history: list[dict], before_dev: dict | None = None) -> list[Path]:
    """PNG plots: loss parts per step, dev nDCG@10 per round (round 0: the student before training, from
    ``before_dev``), false-negative margin per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    step = 0
    xs: dict[str, list] = {}
    for entry in history:
        if "loss" not in entry:
            continue
        step += 1
        for key in ("loss", "contrastive", "sentence_level", "word_level"):
            if key in entry:
                xs.setdefault(key, []).append((step, entry[key]))
    for key, points in xs.items():
        ax.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
    ax.set_xlabel("logging step (all rounds)")
    ax.set_ylabel("loss")
    ax.set_title("MD2PR loss parts")
    ax.legend()
    fig.tight_layout()
    paths.append(run_dir / "loss_parts.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    rs = [info["round"] for info in rounds]
    dev_rounds, dev_values = rs, [info["dev"]["ndcg@10"] for info in rounds]
    if before_dev is not None:
        dev_rounds, dev_values = [0, *rs], [before_dev["ndcg@10"], *dev_values]
        ax1.axhline(before_dev["ndcg@10"], color="gray", linestyle=":", label="before training")
        ax1.legend()
    ax1.plot(dev_rounds, dev_values, marker="o")
    ax1.set_xlabel("round (0: before training)")
    ax1.set_ylabel("dev nDCG@10")
    ax1.set_xticks(dev_rounds)
    ax2.plot(rs, [info["filter"].get("margin") or 0.0 for info in rounds], marker="o", color="tab:red")
    ax2.set_xlabel("round")
    ax2.set_ylabel("false-negative margin m_r")
    ax2.set_xticks(rs)
    fig.tight_layout()
    paths.append(run_dir / "rounds.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def command_line() -> str:
    """The command that is running, for the model card (arguments quoted)."""
    return " ".join(shlex.quote(a) for a in ["md2pr", *sys.argv[1:]])
