"""``md2pr push``: a model or run folder to the Hugging Face Hub, with its MD2PR model card, in one commit."""

from __future__ import annotations

from md2pr_st.cli.arguments import PushArguments
from md2pr_st.hub import PushResult, push_to_hub


def run_push(args: PushArguments) -> PushResult:
    """``md2pr push``: the token comes from HF_TOKEN or the login cache (there is no --token flag, so that it
    stays out of shell history and process lists)."""
    result = push_to_hub(
        args.run_or_model_dir,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        dry_run=args.dry_run,
        commit_message=args.commit_message,
        dataset_ids=args.dataset_ids,
    )
    print(result.summary())
    return result
