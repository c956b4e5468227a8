"""Model cards and the Hugging Face Hub: the MD2PR card of a trained student, and pushing it.

- ``run_info.py``: :class:`RunInfo` / :class:`RoundInfo`, what a card reports about a run
- ``card_data.py``: :class:`MD2PRModelCardData`, the host's card data with MD2PR's template and fields
- ``model_index.py``: the Hub's ``model-index`` of a card's retrieval results
- ``model_card.py``: :func:`write_model_card` (a saved model's card, again), :func:`remove_dataset_texts`
- ``model_folder.py``: :func:`validate_model_folder`, what a pushed folder may hold
- ``push.py``: :func:`push_to_hub` (one commit, safetensors only, token never shown)
"""

from __future__ import annotations

from md2pr_st.hub.card_data import MD2PRModelCardData, use_md2pr_card_data
from md2pr_st.hub.model_card import remove_dataset_texts, run_plots, write_model_card
from md2pr_st.hub.model_folder import validate_model_folder
from md2pr_st.hub.push import HubPushError, PushResult, plan_upload, push_to_hub, stage_upload
from md2pr_st.hub.run_info import RoundInfo, RunInfo

__all__ = [
    "HubPushError",
    "MD2PRModelCardData",
    "PushResult",
    "RoundInfo",
    "RunInfo",
    "plan_upload",
    "push_to_hub",
    "remove_dataset_texts",
    "run_plots",
    "stage_upload",
    "use_md2pr_card_data",
    "validate_model_folder",
    "write_model_card",
]
