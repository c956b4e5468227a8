"""What the teacher is trained to minimise: the host's pointwise, pairwise and listwise cross-encoder losses.

:func:`train_teacher` trains on ``(query, passage, label)`` pairs with ``label = grade / max_grade``. A pointwise
loss (``bce``, the default) takes them as they are. A pairwise or listwise loss needs each query's passages side by
side: :func:`teacher_training_lists` groups the pairs by query into lists of at most ``list_size`` passages, the
``{"query", "docs", "labels"}`` rows the host's ``LambdaLoss``, ``RankNetLoss`` and ``ListMLELoss`` read. A step
takes ``batch_size`` pairs either way: ``batch_size // list_size`` lists (at least one) with a ranking loss.

A teacher trained with a ranking loss orders passages, but its logits are not calibrated to the labels: their scale
is whatever the ranking objective settled on. MD2PR reads teacher logits at the scale ``T_t`` assumes (the
sentence level's softmax) and through differences to the positives (the false-negative rule), so look at the
logits such a teacher gives its training pairs, and at the parts' balance (``benchmarks/loss_balance.py``),
before distilling it.

The host's ``ListNetLoss`` is left out: with labels ``grade / max_grade`` in [0, 1] its target ``softmax(y)`` is
nearly uniform (best and worst passage one logit apart at its optimum).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from datasets import Dataset
from sentence_transformers.cross_encoder import losses as cross_encoder_losses

from md2pr_st.config import LIST_LOSSES, TEACHER_LOSSES, check_teacher_loss

if TYPE_CHECKING:
    from sentence_transformers.cross_encoder import CrossEncoder

# The loss names and their check are settings: defined in md2pr_st.config, re-exported here.
__all__ = ["TEACHER_LOSSES", "LIST_LOSSES", "check_teacher_loss", "teacher_loss", "teacher_training_lists"]


def teacher_loss(name: str, model: CrossEncoder) -> Any:
    """The host's cross-encoder loss named ``name`` (a key of :data:`TEACHER_LOSSES`) on ``model``.

    Example:
        >>> teacher_loss("hinge", None)
        Traceback (most recent call last):
        ...
        ValueError: Unknown teacher loss 'hinge'; choose one of bce, ranknet, lambda, listmle.
    """
    check_teacher_loss(name, 2)
    return getattr(cross_encoder_losses, TEACHER_LOSSES[name])(model)


def teacher_training_lists(pairs: Dataset, list_size: int = 8, seed: int = 0) -> Dataset:
    """Group ``(query, passage, label)`` pairs into ``(query, docs, labels)`` lists for a ranking loss.

    Each query's passages are shuffled (``seed``) and cut into lists of at most ``list_size``, each list sorted by
    label, best first (the order ``ListMLELoss`` learns; ties keep the shuffled order, fixed for every epoch); a
    list whose labels are all equal (nothing to order, no gradient for a ranking loss) is left out, so an epoch sees
    fewer pairs than the pointwise loss (fold 0 of ``benchmarks/quality.py`` with lists of 8: 3,415 of 3,621). Every pair that is
    kept lands in exactly one list.

    Example:
        >>> pairs = Dataset.from_dict({
        ...     "query": ["q1", "q1", "q1", "q2", "q2"],
        ...     "passage": ["a", "b", "c", "d", "e"],
        ...     "label": [1.0, 0.0, 0.5, 0.0, 0.0],
        ... })
        >>> lists = teacher_training_lists(pairs, list_size=3)
        >>> list(lists["query"]), lists["docs"][0][:2], lists["labels"][0], len(lists)  # q2's list has nothing to order
        (['q1'], ['a', 'c'], [1.0, 0.5, 0.0], 1)
    """
    if list_size < 2:
        raise ValueError(f"list_size must be >= 2 (a ranking loss compares passages), got {list_size}.")
    grouped: dict[str, list[tuple[str, float]]] = {}
    for query, passage, label in zip(pairs["query"], pairs["passage"], pairs["label"]):
        grouped.setdefault(query, []).append((passage, float(label)))
    rng = random.Random(seed)
    rows: dict[str, list] = {"query": [], "docs": [], "labels": []}
    for query, docs in grouped.items():
        rng.shuffle(docs)
        for start in range(0, len(docs), list_size):
            chunk = sorted(docs[start : start + list_size], key=lambda doc: -doc[1])  # ListMLE reads this order
            if len({label for _, label in chunk}) < 2:
                continue
            rows["query"].append(query)
            rows["docs"].append([passage for passage, _ in chunk])
            rows["labels"].append([label for _, label in chunk])
    if not rows["query"]:
        raise ValueError(
            "No list holds passages of different labels: a ranking loss has nothing to learn. Raise list_size "
            "or max_pairs, give the teacher graded judgements with relevant and non-relevant passages of the same "
            "queries, or train with loss='bce'."
        )
    return Dataset.from_dict(rows)
