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

Each stage is a function of the library that takes and returns objects or paths
(:func:`~md2pr_st.teacher.train_teacher`, :func:`~md2pr_st.mining.mine_hard_negatives`,
:class:`~md2pr_st.false_negatives.FalseNegativeFilter`, :func:`~md2pr_st.student.train_student`,
:class:`~md2pr_st.evaluation.RetrievalEvaluator`, :func:`~md2pr_st.evaluation.teacher_rerank`);
:func:`run_pipeline` composes them, and ``md2pr pipeline`` only loads the splits and calls it.

Every stage is keyed by the content of what it was made from: the data's fingerprint
(:attr:`~md2pr_st.data.RetrievalData.fingerprint`), the model it starts from and every setting that changes its
result. Edit the qrels, and the stages that read them run again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset, load_from_disk
from sentence_transformers import SentenceTransformer

from md2pr_st import distributed
from md2pr_st.config import LossArguments, PipelineArguments
from md2pr_st.data import RetrievalData, training_pairs
from md2pr_st.evaluation import REPORT_METRICS, RetrievalEvaluator, evaluate_run, paired_bootstrap, teacher_rerank
from md2pr_st.false_negatives import FalseNegativeFilter
from md2pr_st.hub import MD2PRModelCardData, run_plots, write_model_card
from md2pr_st.index import CorpusEmbeddingCache
from md2pr_st.mining import mine_hard_negatives
from md2pr_st.models import DEFAULT_STUDENT_ID, resolve_model_name, source_fingerprint
from md2pr_st.outputs import check_output, output_lock, prepare_output_dir
from md2pr_st.plots import plot_run
from md2pr_st.stage import STAGE_FILE, Stage, save_dataset
from md2pr_st.student import train_student
from md2pr_st.teacher import TEACHER_REPORT, QrelsScorer, Teacher, train_teacher
from md2pr_st.utils import atomic_path, write_json

logger = logging.getLogger(__name__)

__all__ = ["STAGE_FILE", "Stage", "run_pipeline", "save_dataset", "significance"]


@dataclasses.dataclass
class _Run:
    """What every stage of one pipeline run needs: the splits, the settings and the run folder."""

    splits: Mapping[str, RetrievalData]
    args: PipelineArguments
    loss_args: LossArguments
    run_dir: Path
    student_name: str
    data_key: dict[str, str]
    student_key: str = ""
    training_args: dict[str, Any] = dataclasses.field(default_factory=dict)  # the host's, for the student trainer
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def load_student(self, path: str, card_data: bool = False) -> SentenceTransformer:
        """The student saved at ``path``; with ``card_data``, with the MD2PR card data it was trained with."""
        kwargs = {"model_card_data": MD2PRModelCardData.from_folder(path)} if card_data else {}
        model = SentenceTransformer(path, device=self.args.device, **kwargs)
        if self.args.max_seq_length:
            model.max_seq_length = self.args.max_seq_length
        return model

    def evaluate(self, model: SentenceTransformer, split: str) -> tuple[dict, dict[str, dict[str, float]]]:
        """Retrieval on ``split`` with the corpus embeddings cached in the run folder: ``(result, run)``; the result
        holds each metric's per-query values (``per_query``) for the paired significance of before / after."""
        data = self.splits[split]
        cache = CorpusEmbeddingCache(model, data.corpus, self.run_dir / "embeddings", show_progress_bar=True)
        result, run = RetrievalEvaluator(data, REPORT_METRICS).evaluate(model, index=cache.build_index())
        result["per_query"] = evaluate_run(run, data.qrels, REPORT_METRICS, per_query=True)["per_query"]
        return result, run


def run_pipeline(
    splits: Mapping[str, RetrievalData],
    args: PipelineArguments | None = None,
    loss_args: LossArguments | None = None,
    *,
    command: str | None = None,
    training_args: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the whole MD2PR pipeline on ``splits`` (``train``, ``dev``, ``test``); returns ``metrics.json``.

    Stage 0 trains the teacher on ``train`` (or records ``args.teacher``); the student is evaluated on ``test`` and
    ``dev`` before training; each round mines hard negatives for the ``train`` queries with the current student,
    filters false negatives with the round's threshold, trains the student with ``L_c + alpha L_s + beta L_w``
    and evaluates it on ``dev``; the final student is evaluated on ``test`` next to the teacher reranking its top-k.
    The run folder gets the model with its card, ``metrics.json``, ``run_info.json`` and the plots.
    ``training_args`` are other options of the host's ``SentenceTransformerTrainingArguments`` for the student's
    trainer (``gradient_accumulation_steps``, ``bf16``, ``report_to``, ...).

    The run folder must be new, empty or an earlier md2pr run (``args.overwrite`` adopts any other folder), and one
    run at a time writes it (a second gets :class:`~md2pr_st.outputs.OutputLockedError`). Every stage is keyed by
    the contents of what it was made from: the splits' data, the student's and a given teacher's files, the
    teacher stage (so a teacher retrained with other settings retrains the rounds) and every setting.

    Example:
        >>> from md2pr_st.data import load_splits
        >>> metrics = run_pipeline(load_splits("rag24"), PipelineArguments(output_dir="runs/x"))  # doctest: +SKIP
        >>> metrics["after"]["ndcg@10"] - metrics["before"]["ndcg@10"]  # doctest: +SKIP
    """
    start = time.perf_counter()
    missing = [split for split in ("train", "dev", "test") if split not in splits]
    if missing:
        raise ValueError(f"run_pipeline needs the splits train, dev and test; {missing} missing.")
    args = args or PipelineArguments()
    distributed.setup()  # under torchrun / accelerate launch: every stage split across the processes
    run_dir = Path(args.output_dir)
    if distributed.is_main():  # the main process checks, locks and writes; the others wait where it writes
        run_dir = check_output(
            args.output_dir,
            kind="pipeline",
            overwrite=args.overwrite,
            option="output_dir",
            inputs=pipeline_inputs(args),
        )
    run_dir = Path(distributed.broadcast(str(run_dir)))
    with distributed.main_only(output_lock(run_dir, "output_dir")):
        if distributed.is_main():
            prepare_output_dir(run_dir, overwrite=args.overwrite, kind="pipeline")
        distributed.barrier()
        student_name = resolve_model_name(args.model)
        data_key = {split: data.fingerprint for split, data in splits.items()}
        run = _Run(splits, args, loss_args or LossArguments(), run_dir, student_name, data_key)
        run.training_args = dict(training_args or {})
        run.student_key = source_fingerprint(student_name)
        with distributed.shared_work():  # every process runs every stage; encoding and scoring are split
            return _run_stages(run, command, start)


def pipeline_inputs(args: PipelineArguments) -> dict[str, str | None]:
    """The local paths a run reads (models named by path), which its run folder may not be, hold or lie inside."""
    return {"model": args.model, "teacher": args.teacher, "teacher_base": args.teacher_base}


def _run_stages(run: _Run, command: str | None, start: float) -> dict[str, Any]:
    """:func:`run_pipeline` after its checks, under the lock of the run folder."""
    args, splits, run_dir = run.args, run.splits, run.run_dir
    teacher_path, teacher_key = _teacher_stage(run)
    teacher = _load_teacher(teacher_path, args)
    student = run.load_student(run.student_name)
    before, before_dev = _before_stage(run, student)
    rounds, history, current = _rounds(run, teacher, teacher_path, teacher_key, student)
    t0 = time.perf_counter()
    final = run.load_student(current, card_data=True)
    after, student_run = run.evaluate(final, "test")
    rerank = teacher_rerank(teacher, splits["test"], student_run, args.rerank_k, show_progress_bar=True)
    metrics = {"before": before, "after": after, "teacher_rerank": rerank}
    metrics["after_minus_before"] = significance(after, before)
    if distributed.is_main():
        with atomic_path(run_dir / "model", is_dir=True, overwrite=args.overwrite, kind="student") as tmp:
            final.save(str(tmp))
        write_json(run_dir / "metrics.json", metrics)
        run.timings["after"] = time.perf_counter() - t0
        _report(run, metrics, rounds, history, before_dev, teacher_path, command, time.perf_counter() - start)
    distributed.barrier()
    return metrics


def significance(after: dict[str, Any], before: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per metric, the mean per-query difference after - before with its paired bootstrap 95 % CI
    (:func:`~md2pr_st.evaluation.paired_bootstrap`): a gain whose interval holds 0 is within the noise of the split."""
    return {
        metric: paired_bootstrap(after["per_query"][metric], before["per_query"][metric])
        for metric in REPORT_METRICS
        if metric in after.get("per_query", {}) and metric in before.get("per_query", {})
    }


def _teacher_stage(run: _Run) -> tuple[str, str]:
    """Stage 0: the path of the teacher, trained on the train split unless ``args.teacher`` names one, and the
    stage's key (what the teacher is made of: the rounds that use it are keyed by it)."""
    args, t0 = run.args, time.perf_counter()
    stage = Stage(
        run.run_dir / "teacher",
        {"teacher": args.teacher, "teacher_files": source_fingerprint(args.teacher) if args.teacher else None,
         "base": args.teacher_base, "base_files": source_fingerprint(args.teacher_base) if not args.teacher else None,
         "student": run.student_key, "epochs": args.teacher_epochs,
         "learning_rate": args.teacher_learning_rate, "max_length": args.teacher_max_length,
         "max_pairs": args.teacher_max_pairs, "random_negatives": args.teacher_random_negatives,
         **({"mined_negatives": args.teacher_mined_negatives} if args.teacher_mined_negatives else {}),
         **({"loss": args.teacher_loss, "list_size": args.teacher_list_size} if args.teacher_loss != "bce" else {}),
         "seed": args.seed, "data": run.data_key["train"], "dev": run.data_key["dev"]},
    )  # fmt: skip
    if args.teacher:
        if not stage.done:
            stage.finish({"teacher": args.teacher, "trained": False})
        return args.teacher, stage.key
    if stage.done:
        return stage.manifest["outputs"]["teacher"], stage.key
    logger.info("Stage 0: training the teacher cross-encoder")
    stage.start(partial=[run.run_dir / "teacher" / "model.checkpoints"])
    settings = ("max_length", "epochs", "learning_rate", "random_negatives", "mined_negatives", "max_pairs", "loss")
    settings += ("list_size",)
    path = train_teacher(
        run.splits["train"],
        run.run_dir / "teacher" / "model",
        base_model=args.teacher_base,
        dev=run.splits["dev"],
        student=run.student_name,
        **{name: getattr(args, f"teacher_{name}") for name in settings},
        seed=args.seed,
        device=args.device,
        overwrite=True,  # the stage is not done under these settings: a teacher on disk is another one
    )
    stage.finish({"teacher": str(path), "trained": True})
    run.timings["teacher"] = time.perf_counter() - t0
    return str(path), stage.key


def _load_teacher(path: str, args: PipelineArguments) -> Teacher:
    return Teacher(path, max_length=args.teacher_max_length, device=args.device)


def _before_stage(run: _Run, student: SentenceTransformer) -> tuple[dict, dict]:
    """The off-the-shelf student on test and dev (one corpus encoding for both, reused by round 1's mining)."""
    t0 = time.perf_counter()
    stage = Stage(
        run.run_dir / "before",
        {"student": run.student_name, "student_files": run.student_key, "max_seq_length": run.args.max_seq_length,
         "data": run.data_key,
         "metrics": REPORT_METRICS, "splits": ["test", "dev"]},
    )  # fmt: skip
    if stage.done:
        outputs = stage.manifest["outputs"]
        return outputs["test"], outputs["dev"]
    before, _ = run.evaluate(student, "test")
    before_dev, _ = run.evaluate(student, "dev")
    stage.finish({"test": before, "dev": before_dev})
    run.timings["before"] = time.perf_counter() - t0
    return before, before_dev


def _false_negative_filter(run: _Run, teacher: Teacher) -> FalseNegativeFilter:
    """The round's filter: scores from the cross-encoder or from the graded judgements; flagged candidates masked
    (kept for L_s, left out of L_c by the loss with the round's margin and threshold) or dropped and refilled."""
    args = run.args
    graded = args.sentence_scores == "qrels"
    return FalseNegativeFilter(
        QrelsScorer(run.splits["train"]) if graded else teacher,
        rule=args.filter_rule,
        quantile=args.filter_quantile,
        num_negatives=args.num_negatives,
        action=args.filter_action,
        # Grades: never let m_r reach the lowest positive grade, or the threshold t(q, d+) - m_r would sink to 0
        # and flag grade-0 and unjudged candidates, leaving L_c without a negative.
        max_margin=args.min_grade - 0.5 if graded else None,
        show_progress_bar=True,
    )


def _rounds(
    run: _Run, teacher: Teacher, teacher_path: str, teacher_key: str, student: SentenceTransformer
) -> tuple[list[dict], list[dict], str]:
    """Rounds 1..R of mine -> filter -> train -> evaluate; finished rounds are read back, not rerun."""
    args = run.args
    pairs = training_pairs(
        run.splits["train"], min_grade=args.min_grade, positives=args.positives, skip_queries_without_positive=True
    )
    fn_filter = _false_negative_filter(run, teacher)
    rounds: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    current, current_key = run.student_name, run.student_key
    for r in range(1, args.rounds + 1):
        round_dir = run.run_dir / f"round_{r}"
        settings = {**dataclasses.asdict(args), **dataclasses.asdict(run.loss_args)}
        settings.update(round=r, student=current, teacher=teacher_path, data=run.data_key, metrics=REPORT_METRICS)
        settings["training_args"] = run.training_args
        # What the round starts from, by content: the student (round 1: its files; later: the previous round, whose
        # key says what made its student) and the teacher stage.
        settings.update(student_key=current_key, teacher_key=teacher_key)
        for name in ("output_dir", "device", "overwrite"):
            settings.pop(name)
        stage = Stage(round_dir, settings)
        if stage.done:
            info = stage.manifest["outputs"]
            fn_filter.load_statistics(round_dir / "filter_stats.json")
        else:
            logger.info("Round %d/%d: mine, filter, train, evaluate", r, args.rounds)
            stage.start(partial=[round_dir / "student.checkpoints"])
            model = student if current == run.student_name else run.load_student(current)  # trained in place
            info = _round(run, r, round_dir, model, pairs, fn_filter, teacher)
            stage.finish(info)
        rounds.append(info)
        history.extend(info.get("log_history", []))
        current, current_key = str(round_dir / "student"), stage.key
    return rounds, history, current


def _round(
    run: _Run,
    r: int,
    round_dir: Path,
    model: SentenceTransformer,
    pairs: Dataset,
    fn_filter: FalseNegativeFilter,
    teacher: Teacher,
) -> dict[str, Any]:
    """One round: mine with ``model``, filter, train it, evaluate it on dev; returns the round's record."""
    args, t0 = run.args, time.perf_counter()
    mined = mine_hard_negatives(
        pairs,
        run.splits["train"].corpus,
        model,
        num_negatives=args.mine_candidates,
        range_min=args.range_min,
        range_max=args.range_max,
        sampling=args.sampling,
        seed=args.seed + r,
        cache_dir=run.run_dir / "embeddings",
        show_progress_bar=True,
    )
    if len(mined) == 0:
        raise ValueError(
            f"Round {r}: mining kept no training row: every query had fewer than {args.mine_candidates} candidates in "
            f"ranks {args.range_min}..{args.range_max - 1}. Raise range_max or lower mine_candidates."
        )
    filtered = fn_filter.apply(mined)
    if len(filtered) == 0:
        stats = fn_filter.statistics["rounds"][-1]
        raise ValueError(
            f"Round {r}: no training row is left after false-negative filtering: {len(mined)} rows mined, "
            f"{stats.get('flagged')} of {stats.get('candidates_scored')} candidates flagged, "
            f"{stats.get('dropped_rows')} rows dropped. Loosen the rule (filter_quantile), use filter_action mask, or "
            "mine more candidates."
        )
    if distributed.is_main():
        fn_filter.save_statistics(round_dir / "filter_stats.json")
        fn_filter.plot(round_dir / "filter_gaps.png")
    save_dataset(filtered, round_dir / "filtered", kind="filtered")  # the main process writes, the others wait
    stats = fn_filter.statistics["rounds"][-1]
    mined_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    path, log_history = train_student(
        model,
        load_from_disk(str(round_dir / "filtered")),
        round_dir / "student",
        run.loss_args,
        teacher=teacher if run.loss_args.beta > 0 else None,
        # Dropped candidates are gone; masked ones are left out of L_c by the same margin and threshold.
        **fn_filter.masking().loss_kwargs(),
        epochs=args.epochs_per_round,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_seq_length=args.max_seq_length,
        save_steps=args.save_steps,
        seed=args.seed + r,
        device=args.device,
        overwrite=True,  # the round's stage owns its student folder and checkpoints
        training_args=run.training_args,
    )
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dev, _ = run.evaluate(run.load_student(str(path)), "dev")
    if distributed.is_main():
        write_json(round_dir / "dev.json", dev)
    for entry in log_history:
        entry["round"] = r
    return {
        "round": r,
        "rows": len(filtered),
        "filter": stats,
        "dev": dev,
        "log_history": log_history,
        "seconds": {"mine_filter": mined_s, "train": train_s, "eval": time.perf_counter() - t0},
    }


def _report(
    run: _Run,
    metrics: dict[str, Any],
    rounds: list[dict],
    history: list[dict],
    before_dev: dict,
    teacher_path: str,
    command: str | None,
    seconds: float,
) -> None:
    """``run_info.json``, the plots and the model card of a finished run; the results table in the log."""
    args, loss_args, run_dir = run.args, run.loss_args, run.run_dir
    teacher_report_path = Path(teacher_path) / TEACHER_REPORT
    run_info = {
        "teacher": teacher_path,
        "teacher_report": json.loads(teacher_report_path.read_text()) if teacher_report_path.is_file() else {},
        "student_base": args.model or DEFAULT_STUDENT_ID,
        "alpha": loss_args.alpha,
        "beta": loss_args.beta,
        "temperatures": {
            "student": loss_args.student_temperature,
            "teacher": loss_args.teacher_temperature,
            "word": loss_args.word_temperature,
            "contrastive_scale": loss_args.scale,
        },
        "rounds": [_round_summary(info) for info in rounds],
        "command": command or "md2pr pipeline",
        # The data's name without the split suffix (the card says which split each number is on).
        "dataset": run.splits["test"].name.removesuffix("-test"),
        "settings": {**dataclasses.asdict(args), **dataclasses.asdict(loss_args)},
        "seconds": round(seconds, 1),
        "timings": {k: round(v, 1) for k, v in run.timings.items()},
        "dev_ndcg@10_before": before_dev["ndcg@10"],
    }
    if args.sentence_scores == "qrels":  # listed in the card's settings next to the cross-encoder (word level)
        run_info["sentence_level_teacher"] = f"graded judgements of {run.splits['train'].name} (qrels)"
    write_json(run_dir / "run_info.json", run_info)
    plot_run(run_dir, rounds, history, before_dev)
    try:
        write_model_card(run_dir / "model", metrics, run_info, plots=run_plots(run_dir))
    except Exception as exc:  # the model is saved either way; a card problem must not lose the run
        logger.warning("Could not write the model card: %s", exc)
    logger.info("Finished in %.0f s; run folder %s", seconds, run_dir)


def _round_summary(info: dict[str, Any]) -> dict[str, Any]:
    keys = ("rule", "margin", "candidates_scored", "flagged", "flagged_fraction")
    return {"round": info["round"], **{k: info["filter"].get(k) for k in keys}, "dev_ndcg@10": info["dev"]["ndcg@10"]}
