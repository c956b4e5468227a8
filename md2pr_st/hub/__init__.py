"""Model cards and the Hugging Face Hub: the MD2PR card of a trained student, and pushing it.

- ``model_card.py``: the card (provenance, results, plots) on top of the host library's card
- ``push.py``: :func:`push_to_hub` (one commit, safetensors only, token never shown)
"""

from __future__ import annotations

from md2pr_st.hub.model_card import RoundInfo, RunInfo, remove_dataset_texts, write_model_card
from md2pr_st.hub.push import HubPushError, PushResult, push_to_hub, stage_upload, validate_model_folder

__all__ = [
    "HubPushError",
    "PushResult",
    "RoundInfo",
    "RunInfo",
    "push_to_hub",
    "remove_dataset_texts",
    "stage_upload",
    "validate_model_folder",
    "write_model_card",
]
