"""The teacher: a frozen cross-encoder (logits and attention), graded judgements as scores, and teacher training.

- ``cross_encoder.py``: :class:`Teacher` (logits ``t(q, d)``, query-to-passage :class:`AttentionBlock`)
- ``scoring.py``: :func:`score_candidates` (the one place that builds the pairs a teacher scores), :class:`QrelsScorer`
- ``attention_store.py``: :class:`AttentionRecorder` (records the attention while scoring, e.g. in the
  false-negative pass), :class:`OfflineTeacher` (the recorded logits and attention, without the teacher)
- ``pairs.py``: :func:`teacher_training_pairs` (judged pairs, random and student-mined negatives)
- ``training.py``: :func:`train_teacher` (``CrossEncoderTrainer``, in the training skeleton shared with the student)
- ``report.py``: the teacher's report (``md2pr_teacher.json``), :func:`reranking_gap` (what there is to distil)
"""

from __future__ import annotations

from md2pr_st.teacher.attention_store import AttentionRecorder, AttentionStoreError, MissingPairsError, OfflineTeacher
from md2pr_st.teacher.cross_encoder import AttentionBlock, Teacher, TeacherOutput
from md2pr_st.teacher.pairs import mine_teacher_negatives, teacher_training_pairs
from md2pr_st.teacher.report import TEACHER_REPORT, reranking_gap
from md2pr_st.teacher.scoring import QrelsScorer, candidate_pairs, score_candidates
from md2pr_st.teacher.training import train_teacher

__all__ = [
    "TEACHER_REPORT",
    "AttentionBlock",
    "AttentionRecorder",
    "AttentionStoreError",
    "MissingPairsError",
    "OfflineTeacher",
    "QrelsScorer",
    "Teacher",
    "TeacherOutput",
    "candidate_pairs",
    "mine_teacher_negatives",
    "reranking_gap",
    "score_candidates",
    "teacher_training_pairs",
    "train_teacher",
]
