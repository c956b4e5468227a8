"""What a user does first with an installed md2pr-st, run against the installed wheel from outside the source tree.

``make package-check`` builds the sdist and the wheel, installs the wheel into a fresh virtual environment and runs
this script with ``python -I`` from an empty temporary folder (so ``md2pr_st`` can only come from the wheel):

1. every module of the installed package imports, and every public name of ``md2pr_st`` resolves;
2. ``md2pr --help`` and ``md2pr <command> --help`` exit 0 for every subcommand;
3. a tiny drop-in fit: ``FalseNegativeFilter`` flags the candidates of 4 rows, ``MD2PRLoss`` (both levels) trains
   the embedded all-MiniLM-L6-v2 for 2 steps in ``SentenceTransformerTrainer``, the model is saved;
4. a process that never imports ``md2pr_st`` loads the saved folder with ``SentenceTransformer`` and encodes.

Exits non-zero with the failing step on any problem.
"""

from __future__ import annotations

import importlib
import importlib.resources
import os
import pkgutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def check_imports() -> None:
    import md2pr_st

    where = Path(md2pr_st.__file__).resolve()
    if "site-packages" not in where.parts:
        raise SystemExit(f"md2pr_st was imported from {where}, not from an installed wheel.")
    # every module but ``python -m`` entry points, which run the CLI when imported
    modules = [
        m.name for m in pkgutil.walk_packages(md2pr_st.__path__, "md2pr_st.") if not m.name.endswith("__main__")
    ]
    for name in modules:
        importlib.import_module(name)
    missing = [name for name in md2pr_st.__all__ if getattr(md2pr_st, name, None) is None]
    if missing:
        raise SystemExit(f"public names that do not resolve: {missing}")
    template = Path(str(importlib.resources.files("md2pr_st.model_cards") / "md2pr_model_card_template.md"))
    if not template.is_file():
        raise SystemExit("the model card template is missing from the wheel")
    print(f"imports: {len(modules)} modules, {len(md2pr_st.__all__)} public names, from {where.parent}")


def check_help() -> None:
    from md2pr_st.cli import COMMANDS

    md2pr = Path(sys.executable).with_name("md2pr")
    for command in ([], *([name] for name in COMMANDS)):
        proc = subprocess.run([str(md2pr), *command, "--help"], capture_output=True, text=True)
        if proc.returncode != 0 or "usage" not in proc.stdout:
            raise SystemExit(f"md2pr {' '.join(command)} --help failed ({proc.returncode}): {proc.stderr[-500:]}")
    print(f"help: md2pr and its {len(COMMANDS)} subcommands")


def drop_in_fit(output: Path) -> None:
    from datasets import Dataset
    from sentence_transformers.sentence_transformer.model import SentenceTransformer
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import (
        SentenceTransformerTrainingArguments as Arguments,
    )

    from md2pr_st import FalseNegativeFilter, MD2PRLoss, Teacher
    from md2pr_st.models import resolve_model_name

    model = SentenceTransformer(resolve_model_name(None), device="cpu")
    teacher = Teacher(resolve_model_name(None), num_labels=1)  # a cross-encoder with a fresh head, for the smoke run
    mined = Dataset.from_dict({
        "query": ["what is python", "capital of france", "tea or coffee", "why do cats purr"],
        "positive": ["Python is a programming language.", "Paris is the capital of France.",
                     "Tea has less caffeine than coffee.", "Cats purr when they are content."],
        "negative_1": ["Java is an island.", "Lyon is a city in France.", "Water is a drink.", "Dogs bark."],
        "negative_2": ["A snake sheds its skin.", "Berlin is in Germany.", "Milk is white.", "Birds sing."],
    })  # fmt: skip
    fn_filter = FalseNegativeFilter(teacher, num_negatives=1, action="mask")
    rows = fn_filter.apply(mined)
    round_ = fn_filter.statistics["rounds"][-1]
    loss = MD2PRLoss(model, teacher=teacher, beta=0.1, false_negative_margin=round_["margin"],
                     false_negative_threshold=round_["threshold"])  # fmt: skip
    args = Arguments(str(output / "checkpoints"), per_device_train_batch_size=2, max_steps=2, report_to=[],
                     use_cpu=True, save_strategy="no", logging_steps=1)  # fmt: skip
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=rows, loss=loss)
    trainer.train()
    parts = [entry for entry in trainer.state.log_history if "word_level" in entry]
    if not parts:
        raise SystemExit(f"the trainer logged no loss parts: {trainer.state.log_history}")
    model.save(str(output / "model"))
    print(f"fit: {len(rows)} rows, 2 steps, loss parts {sorted(k for k in parts[0] if k != 'epoch')}", flush=True)


def reload_without_md2pr(output: Path) -> None:
    code = (
        "import sys\n"
        "from sentence_transformers import SentenceTransformer\n"
        f"model = SentenceTransformer({str(output / 'model')!r}, device='cpu')\n"
        "assert model.encode(['a query']).shape == (1, 384)\n"
        "assert not any(name.startswith('md2pr_st') for name in sys.modules), 'md2pr_st was imported'\n"
        "print('reload: plain SentenceTransformer, md2pr_st not imported')\n"
    )
    subprocess.run([sys.executable, "-I", "-c", code], check=True, env=os.environ)


def main() -> None:
    check_imports()
    check_help()
    with tempfile.TemporaryDirectory() as tmp:
        drop_in_fit(Path(tmp))
        reload_without_md2pr(Path(tmp))
    print("installed wheel: OK")


if __name__ == "__main__":
    main()
