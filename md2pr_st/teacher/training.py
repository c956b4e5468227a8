"""Train the cross-encoder teacher on a :class:`~md2pr_st.data.RetrievalData` train split.

No pretrained cross-encoder ships on machines without Hub access, so MD2PR's teacher is trained here: a
sentence-transformers ``CrossEncoder`` (``num_labels=1``, by default on the embedded all-MiniLM-L6-v2
backbone) fitted with ``CrossEncoderTrainer`` and ``BinaryCrossEntropyLoss`` on graded relevance judgements (or
one of the host's pairwise / listwise losses: :mod:`md2pr_st.teacher.objectives`).

Training pairs (:mod:`md2pr_st.teacher.pairs`): every judged ``(query, passage)`` of the split with the soft label
``grade / max_grade`` (grades 0..3 -> 0, 1/3, 2/3, 1), plus ``random_negatives`` passages per query drawn from the
corpus outside the query's judgements with label 0 (mined negatives come from the whole corpus, so the teacher must
also have seen easy ones). The loss is ``BCEWithLogits(t(q, d), y)``, so the teacher outputs logits ``t(q, d)`` on
the scale the false-negative filter and the sentence-level loss use.

The training runs in the skeleton it shares with the student (:class:`~md2pr_st.training.TrainingRun`); the report
saved with the teacher, and :func:`~md2pr_st.teacher.report.reranking_gap`, what there is to distil, are in
:mod:`md2pr_st.teacher.report`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments

from md2pr_st.config import LIST_LOSSES, check_teacher_loss
from md2pr_st.data import RetrievalData, dataset_fingerprint
from md2pr_st.hub import remove_dataset_texts
from md2pr_st.models import model_fingerprint, resolve_model_name, source_fingerprint
from md2pr_st.teacher.objectives import teacher_loss, teacher_training_lists
from md2pr_st.teacher.pairs import mine_teacher_negatives, training_pairs_of
from md2pr_st.teacher.report import TEACHER_REPORT, reranking_gap, same_teacher, training_report
from md2pr_st.training import TrainingRun, training_arguments
from md2pr_st.utils import write_json

logger = logging.getLogger(__name__)

__all__ = ["TEACHER_REPORT", "train_teacher"]


def train_teacher(
    train: RetrievalData | Dataset,
    output_dir: str | Path,
    *,
    base_model: str | Path | None = None,
    dev: RetrievalData | None = None,
    student: str | Path | SentenceTransformer | None = None,
    max_length: int = 256,
    epochs: float = 1.0,
    batch_size: int = 16,
    learning_rate: float = 5e-5,
    warmup_ratio: float = 0.1,
    random_negatives: int = 2,
    mined_negatives: int = 0,
    max_pairs: int | None = None,
    seed: int = 0,
    loss: str = "bce",
    list_size: int = 8,
    save_steps: int = 50,
    device: str | None = None,
    overwrite: bool = False,
    show_progress_bar: bool = True,
    callbacks: list | None = None,
    training_args: Mapping[str, Any] | None = None,
) -> Path:
    """Train a ``CrossEncoder`` teacher with ``CrossEncoderTrainer`` and return the folder it was saved to.

    The teacher minimises ``BCEWithLogits(t(q, d), y)`` over :func:`~md2pr_st.teacher.pairs.teacher_training_pairs` (``y = grade /
    max_grade``; random corpus passages with ``y = 0``), or with ``loss`` one of the host's ranking losses over
    the same pairs grouped into lists of a query's passages
    (:func:`~md2pr_st.teacher.objectives.teacher_training_lists`). The final model is written atomically to
    ``output_dir``; trainer checkpoints go to ``output_dir + ".checkpoints"`` every ``save_steps`` steps, and a
    run that was interrupted resumes from the last one. When ``dev`` is given, :func:`~md2pr_st.teacher.report.reranking_gap` compares
    teacher and student on it and the result is saved in ``output_dir/md2pr_teacher.json`` (with the training
    settings).

    Everything is keyed by a record of what the teacher is made of (a fingerprint of its training pairs, of the base
    model's files, of the dev split and student of the report, and every setting): a teacher in ``output_dir`` is
    reused only when its record is the same (else retrained, with a warning that names what changed), and
    checkpoints are resumed only when theirs is (else refused, or with ``overwrite`` discarded). A second process
    training into the same ``output_dir`` is refused.

    Args:
        train: the train split (a :class:`RetrievalData`), or a ready ``(query, passage, label)`` dataset.
        output_dir: where the trained teacher is saved (a plain ``CrossEncoder`` folder).
        base_model: backbone or cross-encoder to start from (Hub id or folder; default: the embedded
            all-MiniLM-L6-v2, given a fresh one-logit head).
        dev: a dev split for the teacher-vs-student nDCG@10 reranking gap.
        student: the student for the gap and for ``mined_negatives`` (default: the embedded all-MiniLM-L6-v2).
        max_length: maximum tokens of a (query, passage) pair.
        epochs, batch_size, learning_rate, warmup_ratio, seed: trainer settings.
        random_negatives: label-0 corpus passages added per query.
        mined_negatives: label-0 passages per query mined by ``student`` from the whole corpus, the best-ranked
            that the query's judgements do not cover (:func:`~md2pr_st.teacher.pairs.mine_teacher_negatives`, from
            its top 50); ``train`` must then be a :class:`RetrievalData`.
        max_pairs: train on a random sample of at most this many pairs (to bound CPU time).
        loss: ``"bce"`` (pointwise, the default), ``"ranknet"`` (pairwise), ``"lambda"`` or ``"listmle"``
            (listwise): :data:`~md2pr_st.teacher.objectives.TEACHER_LOSSES`.
        list_size: with a ranking loss, passages per list; a step then takes ``max(1, batch_size // list_size)``
            lists, so ``batch_size`` pairs at most, as with ``bce``. ``max_pairs`` samples pairs before they are
            grouped.
        save_steps: checkpoint interval, for resuming.
        device: ``cpu``, ``cuda``, ... (default: auto).
        overwrite: retrain even if ``output_dir`` holds a teacher of the same data and settings, discard checkpoints
            of other data or settings (else refused), and replace a folder md2pr did not write.
        show_progress_bar: show the trainer's progress bar.
        callbacks: extra ``transformers.TrainerCallback`` objects for the trainer.

    Returns:
        The path of the trained teacher, loadable with ``CrossEncoder(path)`` or ``Teacher(path)``.

    Example:
        ::

            >>> from md2pr_st.data import load_rag24
            >>> from md2pr_st.teacher import Teacher, train_teacher
            >>> path = train_teacher(load_rag24("train"), "runs/teacher", dev=load_rag24("dev"))  # doctest: +SKIP
            >>> Teacher(path).score([("what is python", "Python is a language.")])  # doctest: +SKIP
    """
    settings = dict(max_length=max_length, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate)
    settings.update(warmup_ratio=warmup_ratio, random_negatives=random_negatives, max_pairs=max_pairs, seed=seed)
    settings["mined_negatives"] = mined_negatives
    run = TrainingRun(
        output_dir,
        {**settings, "save_steps": save_steps},
        overwrite=overwrite,
        what="teacher training",
        kind="teacher",
        inputs={"base_model": base_model, "student": student},
    )
    check_teacher_loss(loss, list_size)
    settings.update(loss=loss, list_size=list_size if loss in LIST_LOSSES else None)
    # Any other option of the host's CrossEncoderTrainingArguments; part of the teacher's record.
    settings["training_args"] = training_arguments({}, training_args)
    run.start()
    hard_negatives = None
    if mined_negatives:
        if not isinstance(train, RetrievalData):
            raise ValueError("mined_negatives needs the train split (a RetrievalData), not a ready pairs dataset.")
        hard_negatives = mine_teacher_negatives(train, student, mined_negatives, show_progress_bar=show_progress_bar)
    pairs, train_name = training_pairs_of(train, random_negatives, max_pairs, seed, hard_negatives)
    with run.lock():
        record = _teacher_record(pairs, base_model, settings)
        if dev is not None:  # the report's gap is made from them too
            record.update(_gap_record(dev, student))
        if same_teacher(run.output_dir, record) and not overwrite:
            logger.info("%s already holds this teacher (same data and settings); reusing it.", run.output_dir)
            return run.output_dir
        model = CrossEncoder(resolve_model_name(base_model), num_labels=1, max_length=max_length, device=device)
        trainer, rows = _trainer(run, model, pairs, settings, save_steps, show_progress_bar, callbacks)
        remove_dataset_texts(model.model_card_data)  # the saved card must not quote the data (MS MARCO terms)
        start = time.perf_counter()
        resume = run.train(trainer, {k: v for k, v in record.items() if k not in ("dev", "student")})
        report = training_report(trainer, base_model, train_name, len(pairs), settings, record, resume)
        if rows is not pairs:  # a ranking loss: the lists, and the pairs in them (lists with nothing to order are out)
            report.update(train_lists=len(rows), train_pairs_in_lists=sum(len(docs) for docs in rows["docs"]))
        report["train_seconds"] = round(time.perf_counter() - start, 1)
        if dev is not None:
            report["dev"] = reranking_gap(model, student, dev, show_progress_bar=show_progress_bar)

        def write(folder: Path) -> None:
            model.save(str(folder))
            write_json(folder / TEACHER_REPORT, json.loads(json.dumps(report, sort_keys=True, default=str)))

        return run.save(write, model)


def _teacher_record(pairs: Dataset, base_model: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """What a trained teacher is made of: its training rows, its base model's files and every setting. Checkpoints
    are resumed only when it is unchanged."""
    return {"data": dataset_fingerprint(pairs), "base_model": source_fingerprint(base_model), **settings}


def _gap_record(dev: RetrievalData, student: Any) -> dict[str, Any]:
    """What the report's dev gap is made of: the dev split's contents and the student."""
    if isinstance(student, SentenceTransformer):
        return {"dev": dev.fingerprint, "student": model_fingerprint(student)}
    return {"dev": dev.fingerprint, "student": source_fingerprint(student)}


def _trainer(
    run: TrainingRun,
    model: CrossEncoder,
    pairs: Dataset,
    settings: dict[str, Any],
    save_steps: int,
    show_progress_bar: bool,
    callbacks: list | None,
) -> tuple[CrossEncoderTrainer, Dataset]:
    """The host's trainer of the teacher, its checkpoints in the run's checkpoint folder, and the rows it trains on
    (the pairs, or with a ranking loss the lists they are grouped into)."""
    batch_size, seed = settings["batch_size"], settings["seed"]
    if settings["list_size"]:  # a ranking loss: as many lists as fit in batch_size pairs
        batch_size = max(1, batch_size // settings["list_size"])
    args = run.arguments(
        settings["training_args"],
        num_train_epochs=settings["epochs"],
        per_device_train_batch_size=batch_size,
        learning_rate=settings["learning_rate"],
        warmup_steps=float(settings["warmup_ratio"]),  # transformers 5: a float < 1 is a ratio
        seed=seed,
        save_steps=save_steps,
        logging_steps=max(1, save_steps // 2),
        disable_tqdm=not show_progress_bar,
        dataloader_drop_last=False,
        # One forward per step: under DDP, the default search for unused parameters marks the head's bias twice.
        ddp_find_unused_parameters=False,
    )
    rows = teacher_training_lists(pairs, settings["list_size"], seed) if settings["loss"] in LIST_LOSSES else pairs
    trainer = CrossEncoderTrainer(
        model=model,
        args=CrossEncoderTrainingArguments(**args),
        train_dataset=rows.shuffle(seed=seed),
        loss=teacher_loss(settings["loss"], model),
        callbacks=callbacks,
    )
    return trainer, rows
