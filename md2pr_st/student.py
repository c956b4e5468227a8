"""Training the student: one stage of :class:`~md2pr_st.losses.MD2PRLoss` with the host's trainer."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets import Dataset

from md2pr_st.cli.arguments import LossArguments
from md2pr_st.utils import atomic_path, last_complete_checkpoint

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


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
) -> tuple[Path, list[dict[str, Any]]]:
    """Train a student with :class:`~md2pr_st.losses.MD2PRLoss` on ``(query, positive, negative_1..n[, scores])``.

    ``L = L_c + alpha * L_s + beta * L_w`` (see :class:`~md2pr_st.losses.MD2PRLoss`), with the weights and
    temperatures of ``loss_args`` (default :class:`~md2pr_st.cli.arguments.LossArguments`), the online ``teacher``
    (needed when ``beta > 0``), and ``false_negative_margin`` / ``false_negative_threshold`` (masking in L_c of the
    candidates a filter with ``action="mask"`` flagged: its round's ``margin`` and ``threshold``; None: unused). Uses the host's
    ``SentenceTransformerTrainer`` with ``BatchSamplers.NO_DUPLICATES`` (so an in-batch negative is never a copy of
    a row's own positive). Checkpoints go to ``output_dir + ".checkpoints"``; an interrupted run resumes from the
    last one. The trained model is saved atomically to ``output_dir``.

    ``loss``, a function of the loaded model returning any sentence-transformers loss, replaces MD2PRLoss with the
    same data, trainer and budget (``loss_args``, ``teacher`` and ``false_negative_margin`` are then unused): how
    the benchmarks train the host's recipes next to MD2PR's.

    Returns:
        ``(path, log_history)``: the saved model folder and the trainer's log entries (loss parts per step).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from md2pr_st.hub import use_md2pr_card_data
    from md2pr_st.losses import MD2PRLoss
    from md2pr_st.models import resolve_model_name

    output_dir = Path(output_dir)
    if not isinstance(model, SentenceTransformer):
        model = SentenceTransformer(resolve_model_name(model), device=device)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    if loss is None:
        loss_args = loss_args or LossArguments()
        loss_module = MD2PRLoss(
            model,
            teacher=teacher,
            false_negative_margin=false_negative_margin,
            false_negative_threshold=false_negative_threshold,
            **dataclasses.asdict(loss_args),
        )
    else:
        loss_module = loss(model)
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
    use_md2pr_card_data(model)  # before the trainer: it fills the card data, which never quotes the training rows
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train_dataset, loss=loss_module, evaluator=evaluator
    )
    resume = last_complete_checkpoint(checkpoints)
    if resume:
        logger.info("Resuming student training from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    with atomic_path(output_dir, is_dir=True) as tmp:
        model.save(str(tmp))
    shutil.rmtree(checkpoints, ignore_errors=True)
    return output_dir, list(trainer.state.log_history)
