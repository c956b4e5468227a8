"""Training the student: one stage of :class:`~md2pr_st.losses.MD2PRLoss` with the host's trainer, in the training
skeleton it shares with the teacher (:class:`~md2pr_st.training.TrainingRun`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

from md2pr_st.config import LossArguments
from md2pr_st.data import check_training_rows, dataset_fingerprint
from md2pr_st.hub import use_md2pr_card_data
from md2pr_st.losses import LossWeightSchedule, MD2PRLoss
from md2pr_st.losses.md2pr import check_word_level_teacher
from md2pr_st.models import model_fingerprint, resolve_model_name
from md2pr_st.training import TrainingRun, training_arguments

logger = logging.getLogger(__name__)

__all__ = ["train_student"]


def train_student(
    model: str | Path | SentenceTransformer,
    train_dataset: Dataset,
    output_dir: str | Path,
    loss_args: LossArguments | None = None,
    *,
    teacher: Any = None,
    false_negative_margin: float | None = None,
    false_negative_threshold: float | None = None,
    epochs: float = 1.0,
    batch_size: int = 16,
    learning_rate: float = 2e-5,
    max_seq_length: int | None = None,
    save_steps: int = 20,
    seed: int = 13,
    device: str | None = None,
    evaluator: Any = None,
    loss: Callable[[SentenceTransformer], torch.nn.Module] | None = None,
    overwrite: bool = False,
    training_args: Mapping[str, Any] | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Train a student with :class:`~md2pr_st.losses.MD2PRLoss` on ``(query, positive, negative_1..n[, scores])``.

    ``L = L_c + alpha * L_s + beta * L_w`` (see :class:`~md2pr_st.losses.MD2PRLoss`), with the weights and
    temperatures of ``loss_args`` (default :class:`~md2pr_st.config.LossArguments`), the online ``teacher``
    (needed when ``beta > 0``), and ``false_negative_margin`` / ``false_negative_threshold`` (masking in L_c of the
    candidates a filter with ``action="mask"`` flagged: its round's ``margin`` and ``threshold``; None: unused). Uses the host's
    ``SentenceTransformerTrainer`` with ``BatchSamplers.NO_DUPLICATES`` (so an in-batch negative is never a copy of
    a row's own positive). Checkpoints go to ``output_dir + ".checkpoints"``; an interrupted run resumes from the
    last one, only if it was made from the same rows, starting model and settings (else the checkpoints are refused,
    or with ``overwrite`` discarded). The trained model is saved atomically to ``output_dir``, which must be missing
    or md2pr's own unless ``overwrite``; a second process training into the same ``output_dir`` is refused.

    Before any work: the settings are checked (finite, in range; the word level needs ``teacher``), the rows must
    not be empty, the text columns are
    put in the order the loss reads them (``query``, ``positive``, ``negative_1..n``) and a positive column much
    shorter than the query column is reported as probably swapped.

    ``training_args`` are any other options of the host's ``SentenceTransformerTrainingArguments`` (e.g.
    ``{"gradient_accumulation_steps": 4, "bf16": True, "report_to": "tensorboard", "max_steps": 500}``), applied on
    top of the settings above; they are part of what a checkpoint is resumed for.

    ``loss``, a function of the loaded model returning any sentence-transformers loss, replaces MD2PRLoss with the
    same data, trainer and budget (``loss_args``, ``teacher`` and ``false_negative_margin`` are then unused): how
    the benchmarks train the host's recipes next to MD2PR's.

    Returns:
        ``(path, log_history)``: the saved model folder and the trainer's log entries (loss parts per step).

    Example:
        >>> from datasets import Dataset
        >>> train_student(None, Dataset.from_dict({"query": [], "positive": []}), "runs/empty")
        Traceback (most recent call last):
        ...
        ValueError: The training dataset has 0 rows: nothing to train on.
    """
    settings = dict(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, max_seq_length=max_seq_length)
    settings.update(save_steps=save_steps, seed=seed, false_negative_margin=false_negative_margin)
    settings["training_args"] = training_arguments({}, training_args)  # checked now, applied by _train
    run = TrainingRun(
        output_dir,
        {**settings, "false_negative_threshold": false_negative_threshold},
        overwrite=overwrite,
        what="student training",
        kind="student",
        inputs={"model": model},
    )
    loss_args = loss_args or LossArguments()
    if loss is None:
        check_word_level_teacher(loss_args.beta, teacher)
    train_dataset = check_training_rows(train_dataset)
    run.start()
    with run.lock():
        model = _load(model, settings["max_seq_length"], device)
        if loss is None:
            loss_module, callbacks = _md2pr_loss(model, loss_args, teacher, settings, false_negative_threshold)
        else:
            loss_module, callbacks = loss(model), []
        trainer = _trainer(run, model, train_dataset, loss_module, callbacks, settings, device, evaluator)
        record = {"data": dataset_fingerprint(train_dataset), "model": model_fingerprint(model), **settings}
        record.update(
            false_negative_threshold=false_negative_threshold,
            loss=loss_module.get_config_dict() if hasattr(loss_module, "get_config_dict") else repr(loss_module),
            teacher=getattr(teacher, "model_name", None) if teacher is not None else None,
        )
        if callbacks:  # a schedule changes the training: part of what a checkpoint is resumed for
            record["schedules"] = [callback.get_config_dict() for callback in callbacks]
        run.train(trainer, record)
        _check_steps(trainer, len(train_dataset))
        path = run.save(lambda folder: model.save(str(folder)), model)
        return path, list(trainer.state.log_history)


def _load(model: str | Path | SentenceTransformer | None, max_seq_length: int | None, device: str | None) -> Any:
    """The student to train: ``model`` itself, or loaded from its name (default: the embedded MiniLM)."""
    if not isinstance(model, SentenceTransformer):
        model = SentenceTransformer(resolve_model_name(model), device=device)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def _md2pr_loss(
    model: SentenceTransformer,
    loss_args: LossArguments,
    teacher: Any,
    settings: dict[str, Any],
    false_negative_threshold: float | None,
) -> tuple[MD2PRLoss, list]:
    """:class:`~md2pr_st.losses.MD2PRLoss` with ``loss_args``, and the callback of its ``beta`` schedule (if any)."""
    loss_settings = dataclasses.asdict(loss_args)
    beta_schedule = loss_settings.pop("beta_schedule")
    loss_module = MD2PRLoss(
        model,
        teacher=teacher,
        false_negative_margin=settings["false_negative_margin"],
        false_negative_threshold=false_negative_threshold,
        **loss_settings,
    )
    if beta_schedule != "constant" and loss_module.beta > 0:
        return loss_module, [LossWeightSchedule(loss_module, "beta", beta_schedule)]
    return loss_module, []


def _trainer(
    run: TrainingRun,
    model: SentenceTransformer,
    train_dataset: Dataset,
    loss_module: torch.nn.Module,
    callbacks: list,
    settings: dict[str, Any],
    device: str | None,
    evaluator: Any,
) -> SentenceTransformerTrainer:
    """The host's trainer of the student, its checkpoints in the run's checkpoint folder."""
    steps_per_epoch = max(1, len(train_dataset) // settings["batch_size"])
    args = run.arguments(
        settings["training_args"],
        num_train_epochs=settings["epochs"],
        per_device_train_batch_size=settings["batch_size"],
        learning_rate=settings["learning_rate"],
        warmup_steps=0.1,
        seed=settings["seed"],
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_steps=settings["save_steps"],
        logging_steps=max(1, min(5, steps_per_epoch // 4)),
        use_cpu=device == "cpu",
    )
    use_md2pr_card_data(model)  # before the trainer: it fills the card data, which never quotes the training rows
    return SentenceTransformerTrainer(
        model=model,
        args=SentenceTransformerTrainingArguments(**args),
        train_dataset=train_dataset,
        loss=loss_module,
        evaluator=evaluator,
        callbacks=callbacks,
    )


def _check_steps(trainer: Any, rows: int) -> None:
    """A training that ran no step is an error, not an untrained model saved as trained."""
    if trainer.state.global_step == 0:
        args = trainer.args
        raise ValueError(
            f"Training ran 0 steps on {rows} rows at {args.per_device_train_batch_size} rows per device x "
            f"{args.world_size} processes: the {args.batch_sampler} batch sampler formed no batch (no_duplicates "
            "drops batches whose texts repeat, which small data with shared negatives makes likely). Lower the batch "
            "size, or pass --batch_sampler batch_sampler. No model was saved."
        )
