"""The student: the dense retriever MD2PR trains, laid out like the teacher (:mod:`md2pr_st.teacher`).

- ``training.py``: :func:`train_student`, one stage of :class:`~md2pr_st.losses.MD2PRLoss` with the host's
  ``SentenceTransformerTrainer`` (the training skeleton it shares with the teacher: :mod:`md2pr_st.training`)

Its training rows are the collection's (query, positive) pairs (:func:`~md2pr_st.data.training_pairs`) with the
hard negatives of :func:`~md2pr_st.mining.mine_hard_negatives`, filtered by
:class:`~md2pr_st.false_negatives.FalseNegativeFilter`.
"""

from __future__ import annotations

from md2pr_st.student.training import train_student

__all__ = ["train_student"]
