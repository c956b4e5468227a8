"""Train the cross-encoder teacher on a :class:`~md2pr_st.data.RetrievalData` train split.

No pretrained cross-encoder ships on machines without Hub access, so MD2PR's teacher is trained here: a
sentence-transformers ``CrossEncoder`` (``num_labels=1``, by default on the embedded all-MiniLM-L6-v2
backbone) fitted with ``CrossEncoderTrainer`` and ``BinaryCrossEntropyLoss`` on graded relevance judgements (or
one of the host's pairwise / listwise losses: :mod:`md2pr_st.teacher.objectives`).

Training pairs: every judged ``(query, passage)`` of the split with the soft label ``grade / max_grade`` (grades
0..3 -> 0, 1/3, 2/3, 1), plus ``random_negatives`` passages per query drawn from the corpus outside the query's
judgements with label 0 (mined negatives come from the whole corpus, so the teacher must also have seen easy
ones). The loss is ``BCEWithLogits(t(q, d), y)``, so the teacher outputs logits ``t(q, d)`` on the scale the
false-negative filter and the sentence-level loss use.

:func:`reranking_gap` measures what there is to distil: nDCG@10 of the teacher and of the student reranking the
same candidate lists of a dev split (each query's judged pool).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from datasets import Dataset

from md2pr_st import distributed
from md2pr_st.data import RetrievalData
from md2pr_st.evaluation import evaluate_run
from md2pr_st.teacher.pairs import mine_teacher_negatives, training_pairs_of
from md2pr_st.utils import atomic_path, resume_checkpoint, training_arguments, write_json

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.cross_encoder import CrossEncoder

logger = logging.getLogger(__name__)

__all__ = ["train_teacher", "reranking_gap"]

TEACHER_REPORT = "md2pr_teacher.json"
# Settings added after teachers were saved without them: a saved record lacking one had this value.
RECORD_DEFAULTS = {"loss": "bce", "list_size": None, "mined_negatives": 0}


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

    The teacher minimises ``BCEWithLogits(t(q, d), y)`` over :func:`teacher_training_pairs` (``y = grade /
    max_grade``; random corpus passages with ``y = 0``), or with ``loss`` one of the host's ranking losses over
    the same pairs grouped into lists of a query's passages
    (:func:`~md2pr_st.teacher.objectives.teacher_training_lists`). The final model is written atomically to
    ``output_dir``; trainer checkpoints go to ``output_dir + ".checkpoints"`` every ``save_steps`` steps, and a
    run that was interrupted resumes from the last one. When ``dev`` is given, :func:`reranking_gap` compares
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
    from md2pr_st.outputs import check_output, output_lock
    from md2pr_st.teacher.objectives import LIST_LOSSES, check_teacher_loss
    from md2pr_st.validation import check_range

    output_dir = Path(output_dir)
    settings = dict(max_length=max_length, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate)
    settings.update(warmup_ratio=warmup_ratio, random_negatives=random_negatives, max_pairs=max_pairs, seed=seed)
    settings["mined_negatives"] = mined_negatives
    for name, value in {**settings, "save_steps": save_steps}.items():
        check_range(name, value)
    check_teacher_loss(loss, list_size)
    settings.update(loss=loss, list_size=list_size if loss in LIST_LOSSES else None)
    # Any other option of the host's CrossEncoderTrainingArguments; part of the teacher's record.
    settings["training_args"] = training_arguments({}, training_args)
    distributed.setup()  # launched on several processes, the trainer runs DDP and the main process writes
    if distributed.is_main():  # under torchrun / accelerate launch the main process checks, locks and writes
        check_output(output_dir, overwrite=overwrite)
    hard_negatives = None
    if mined_negatives:
        if not isinstance(train, RetrievalData):
            raise ValueError("mined_negatives needs the train split (a RetrievalData), not a ready pairs dataset.")
        hard_negatives = mine_teacher_negatives(train, student, mined_negatives, show_progress_bar=show_progress_bar)
    pairs, train_name = training_pairs_of(train, random_negatives, max_pairs, seed, hard_negatives)
    with distributed.main_only(output_lock(output_dir)):
        record = _teacher_record(pairs, base_model, settings)
        if dev is not None:  # the report's gap is made from them too
            record.update(_gap_record(dev, student))
        if _same_teacher(output_dir, record) and not overwrite:
            logger.info("%s already holds this teacher (same data and settings); reusing it.", output_dir)
            return output_dir
        return _train_teacher(
            pairs,
            train_name,
            output_dir,
            base_model,
            dev,
            student,
            settings,
            record,
            save_steps,
            device,
            overwrite,
            show_progress_bar,
            callbacks,
        )


def _teacher_record(pairs: Dataset, base_model: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """What a trained teacher is made of: its training rows, its base model's files and every setting. Checkpoints
    are resumed only when it is unchanged."""
    from md2pr_st.data import dataset_fingerprint
    from md2pr_st.models import source_fingerprint

    return {"data": dataset_fingerprint(pairs), "base_model": source_fingerprint(base_model), **settings}


def _gap_record(dev: RetrievalData, student: Any) -> dict[str, Any]:
    """What the report's dev gap is made of: the dev split's contents and the student."""
    from sentence_transformers import SentenceTransformer

    from md2pr_st.models import model_fingerprint, source_fingerprint

    if isinstance(student, SentenceTransformer):
        return {"dev": dev.fingerprint, "student": model_fingerprint(student)}
    return {"dev": dev.fingerprint, "student": source_fingerprint(student)}


def _same_teacher(output_dir: Path, record: dict[str, Any]) -> bool:
    """Whether ``output_dir`` holds a teacher made from ``record`` (and, when ``record`` has a dev split, whose
    report's gap was measured on it); a teacher of other data or settings is reported (and then retrained)."""
    try:
        report = json.loads((output_dir / TEACHER_REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    saved = {**RECORD_DEFAULTS, **(report.get("record") or {})}  # a teacher from before a setting existed
    record = json.loads(json.dumps(record, sort_keys=True, default=str))
    differs = sorted(k for k in record if saved.get(k) != record[k])
    if not differs:
        return True
    logger.warning("%s holds a teacher trained with other %s: retraining it.", output_dir, ", ".join(differs))
    return False


def _train_teacher(
    pairs: Dataset,
    train_name: str,
    output_dir: Path,
    base_model: Any,
    dev: RetrievalData | None,
    student: Any,
    settings: dict[str, Any],
    record: dict[str, Any],
    save_steps: int,
    device: str | None,
    overwrite: bool,
    show_progress_bar: bool,
    callbacks: list | None,
) -> Path:
    """:func:`train_teacher` after its checks, under the lock of ``output_dir``."""
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )

    from md2pr_st.hub.model_card import remove_dataset_texts
    from md2pr_st.models import resolve_model_name
    from md2pr_st.teacher.objectives import LIST_LOSSES, teacher_loss, teacher_training_lists

    max_length, epochs, batch_size = settings["max_length"], settings["epochs"], settings["batch_size"]
    learning_rate, seed = settings["learning_rate"], settings["seed"]
    if settings["list_size"]:  # a ranking loss: as many lists as fit in batch_size pairs
        batch_size = max(1, batch_size // settings["list_size"])
    base_name = resolve_model_name(base_model)
    model = CrossEncoder(base_name, num_labels=1, max_length=max_length, device=device)
    checkpoints = output_dir.with_name(output_dir.name + ".checkpoints")
    defaults = dict(
        output_dir=str(checkpoints),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=float(settings["warmup_ratio"]),  # transformers 5: a float < 1 is a ratio
        seed=seed,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=1,
        logging_steps=max(1, save_steps // 2),
        disable_tqdm=not show_progress_bar,
        dataloader_drop_last=False,
        # One forward per step: under DDP, the default search for unused parameters marks the head's bias twice.
        ddp_find_unused_parameters=False,
    )
    args = CrossEncoderTrainingArguments(**training_arguments(defaults, settings["training_args"]))
    rows = teacher_training_lists(pairs, settings["list_size"], seed) if settings["loss"] in LIST_LOSSES else pairs
    trainer = CrossEncoderTrainer(
        model=model,
        args=args,
        train_dataset=rows.shuffle(seed=seed),
        loss=teacher_loss(settings["loss"], model),
        callbacks=callbacks,
    )
    remove_dataset_texts(model.model_card_data)  # the saved card must not quote the data (MS MARCO terms)
    training = {k: v for k, v in record.items() if k not in ("dev", "student")}
    resume = resume_checkpoint(checkpoints, training, overwrite=overwrite, what="teacher training")
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    report = _training_report(trainer, base_model, train_name, len(pairs), settings, record, resume)
    if rows is not pairs:  # a ranking loss: the lists, and the pairs in them (lists with nothing to order are out)
        report.update(train_lists=len(rows), train_pairs_in_lists=sum(len(docs) for docs in rows["docs"]))
    report["train_seconds"] = round(time.perf_counter() - start, 1)
    if dev is not None:
        report["dev"] = reranking_gap(model, student, dev, show_progress_bar=show_progress_bar)
    if distributed.is_main():
        with atomic_path(output_dir, is_dir=True, overwrite=overwrite) as tmp:
            model.save(str(tmp))
            write_json(tmp / TEACHER_REPORT, json.loads(json.dumps(report, sort_keys=True, default=str)))
        shutil.rmtree(checkpoints, ignore_errors=True)
    distributed.barrier()  # the teacher is on disk for every process
    return output_dir


def _training_report(
    trainer: Any, base_model: Any, train_name: str, rows: int, settings: dict, record: dict, resume: Path | None
) -> dict[str, Any]:
    """What ``md2pr_teacher.json`` says of the training: data, settings, steps, first and last loss, the record."""
    from md2pr_st.models import DEFAULT_STUDENT_ID

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    keys = (
        "loss",
        "list_size",
        "max_length",
        "epochs",
        "batch_size",
        "learning_rate",
        "random_negatives",
        "mined_negatives",
        "seed",
    )
    return {
        "base_model": str(base_model or f"{DEFAULT_STUDENT_ID} (embedded)"),
        "train": train_name,
        "train_pairs": rows,
        **{key: settings[key] for key in keys},
        "resumed_from": resume.name if resume else None,
        "steps": trainer.state.global_step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "record": record,
    }


def reranking_gap(
    teacher: str | Path | CrossEncoder,
    student: str | Path | SentenceTransformer | None,
    dev: RetrievalData,
    metric: str = "ndcg@10",
    batch_size: int = 32,
    show_progress_bar: bool = False,
) -> dict[str, Any]:
    """nDCG@10 of the teacher and of the student reranking each dev query's judged pool, and their gap.

    Both rerank the same candidates (the documents judged for the query, so every candidate has a grade):
    the teacher by its logit ``t(q, d)``, the student by ``sim(E(q), E(d))``. ``gap = teacher - student``; a
    positive gap is what distillation can transfer.

    Example:
        ::

            >>> reranking_gap("runs/teacher", None, load_rag24("dev"))  # doctest: +SKIP
            {'metric': 'ndcg@10', 'teacher': 0.71, 'student': 0.66, 'gap': 0.05, 'n_queries': 56, ...}
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.cross_encoder import CrossEncoder

    from md2pr_st.index import encode
    from md2pr_st.models import resolve_model_name
    from md2pr_st.teacher import Teacher

    if not isinstance(teacher, CrossEncoder):
        teacher = CrossEncoder(str(teacher))
    if not isinstance(student, SentenceTransformer):
        student = SentenceTransformer(resolve_model_name(student), device=str(teacher.device))
    scorer = Teacher(teacher, batch_size=batch_size, cache_scores=False)
    queries = dict(zip(dev.queries["id"], dev.queries["text"]))
    row_of = {doc_id: i for i, doc_id in enumerate(dev.corpus["id"])}
    pool_ids = sorted({d for docs in dev.qrels.values() for d in docs})
    pool_texts = dev.corpus.select([row_of[d] for d in pool_ids])["text"]
    text_of = dict(zip(pool_ids, pool_texts))
    pairs = [(qid, did) for qid in queries for did in dev.qrels.get(qid, {})]
    start = time.perf_counter()
    t_scores = scorer.score([(queries[q], text_of[d]) for q, d in pairs], show_progress_bar=show_progress_bar)
    teacher_seconds = time.perf_counter() - start
    q_ids = list(queries)
    q_emb = encode(student, [queries[q] for q in q_ids], "query", batch_size, show_progress_bar)
    d_emb = encode(student, pool_texts, "document", batch_size, show_progress_bar)
    q_row = {q: i for i, q in enumerate(q_ids)}
    d_row = {d: i for i, d in enumerate(pool_ids)}
    s_scores = np.array([float(q_emb[q_row[q]] @ d_emb[d_row[d]]) for q, d in pairs])
    runs: dict[str, dict[str, dict[str, float]]] = {"teacher": {}, "student": {}}
    for (q, d), t, s in zip(pairs, t_scores.tolist(), s_scores.tolist()):
        runs["teacher"].setdefault(q, {})[d] = t
        runs["student"].setdefault(q, {})[d] = s
    results = {name: evaluate_run(run, dev.qrels, [metric]) for name, run in runs.items()}
    return {
        "metric": metric,
        "teacher": round(results["teacher"][metric], 4),
        "student": round(results["student"][metric], 4),
        "gap": round(results["teacher"][metric] - results["student"][metric], 4),
        "n_queries": results["teacher"]["n_queries"],
        "candidates": "judged pool",
        "n_pairs": len(pairs),
        "dev": dev.name,
        "teacher_pairs_per_second": round(len(pairs) / max(teacher_seconds, 1e-9), 1),
    }
