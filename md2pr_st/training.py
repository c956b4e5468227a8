"""One training run into an output folder, the skeleton the student's and the teacher's training share.

:class:`TrainingRun` holds the steps around the host's trainer that both halves of MD2PR take, written once:

1. the settings are checked (finite, in range: :func:`~md2pr_st.validation.check_range`) before any work;
2. :meth:`~TrainingRun.start`: join the launcher's processes (``torchrun`` / ``accelerate launch``), and the main
   process checks the output (missing, md2pr's own of the same kind, or ``overwrite``; never one of the inputs);
3. :meth:`~TrainingRun.lock`: one run at a time writes the output (the main process holds its lock);
4. :meth:`~TrainingRun.train`: the trainer resumes from the last checkpoint in ``output_dir + ".checkpoints"`` only
   when the record of what the run is made of (data, starting model, every setting) is the interrupted run's
   (:func:`resume_checkpoint`); it stops at the first step whose loss, a part of it, or the gradients are not finite
   (:class:`FiniteTrainingGuard`), and a full disk while a checkpoint is written names the folder and the space it
   needed;
5. :meth:`~TrainingRun.save`: the main process checks that every weight is finite, writes the model atomically (a
   crash leaves the previous output) and removes the checkpoints; every process waits until it is on disk.

What is trained, and how (the model, the loss, the host's trainer, the record), is each half's own:
:func:`~md2pr_st.student.train_student` and :func:`~md2pr_st.teacher.train_teacher`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from md2pr_st import distributed
from md2pr_st.outputs import OutputExistsError, check_output, output_lock, prepare_output_dir
from md2pr_st.utils import atomic_path, disk_full_error, write_json
from md2pr_st.validation import check_range, check_trainer_options

logger = logging.getLogger(__name__)

__all__ = [
    "MANAGED_TRAINING_ARGUMENTS",
    "RESUME_FILE",
    "FiniteTrainingGuard",
    "NonFiniteTrainingError",
    "TrainingRun",
    "last_complete_checkpoint",
    "resume_checkpoint",
    "training_arguments",
]


class TrainingRun:
    """The steps of one training into ``output_dir`` that do not depend on what is trained.

    Args:
        output_dir: where the trained model is saved; checkpoints go to ``output_dir + ".checkpoints"``.
        settings: the settings to check before any work (``{name: value}``, checked by name with
            :func:`~md2pr_st.validation.check_range`).
        overwrite: replace an output md2pr did not write (or another kind of md2pr output), and discard checkpoints
            of another run (else refused).
        what: the run's name in messages (``"student training"``).
        kind: the kind of output it saves (``"student"``, ``"teacher"``: :data:`~md2pr_st.outputs.OUTPUT_KINDS`).
        inputs: the local paths it reads (``{"model": path}``), which the output may not be, hold or lie inside.

    Example:
        >>> TrainingRun("runs/x", {"epochs": 0.0, "batch_size": 16})
        Traceback (most recent call last):
        ...
        ValueError: epochs must be > 0 (a number of epochs), got 0.

    A half's training then reads::

        run = TrainingRun(output_dir, settings, overwrite=overwrite, what="teacher training")
        run.start()
        with run.lock():
            trainer = ...  # the model, the loss and the host's trainer, with run.checkpoints as its output_dir
            run.train(trainer, record)
            run.save(lambda folder: model.save(str(folder)), model)
    """

    def __init__(
        self,
        output_dir: str | Path,
        settings: Mapping[str, Any],
        *,
        overwrite: bool = False,
        what: str = "training",
        kind: str | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> None:
        for name, value in settings.items():
            check_range(name, value)
        self.output_dir = Path(output_dir)
        self.checkpoints = self.output_dir.with_name(self.output_dir.name + ".checkpoints")
        self.overwrite, self.what, self.kind = overwrite, what, kind
        self.inputs = {name: value for name, value in (inputs or {}).items() if isinstance(value, (str, Path))}

    def start(self) -> None:
        """Join the launcher's processes (the trainer then runs DDP and the main process writes); the main process
        checks the output before any work."""
        distributed.setup()
        if distributed.is_main():
            check_output(self.output_dir, kind=self.kind, overwrite=self.overwrite, inputs=self.inputs)

    def lock(self) -> Any:
        """The output's lock, held by the main process: a second run writing the same output is refused."""
        return distributed.main_only(output_lock(self.output_dir))

    def arguments(self, overrides: Mapping[str, Any] | None, **defaults: Any) -> dict[str, Any]:
        """The keyword arguments of the host's ``*TrainingArguments``: checkpoints in :attr:`checkpoints` every
        ``save_steps`` (the last one kept), md2pr's ``defaults`` and the user's ``overrides`` on top
        (:func:`training_arguments`)."""
        common = dict(output_dir=str(self.checkpoints), save_strategy="steps", save_total_limit=1)
        return training_arguments({**common, **defaults}, overrides)

    def train(self, trainer: Any, record: Mapping[str, Any]) -> Path | None:
        """Run ``trainer``, from the last checkpoint of an interrupted run made from the same ``record``; returns
        that checkpoint, or None for a run from the start. It stops with :class:`NonFiniteTrainingError` at the
        first step whose loss or gradients are not finite, and with a
        :class:`~md2pr_st.utils.DiskFullError` naming the checkpoint folder when the disk fills."""
        resume = resume_checkpoint(self.checkpoints, dict(record), overwrite=self.overwrite, what=self.what)
        trainer.add_callback(FiniteTrainingGuard(trainer, self.what, self.checkpoints))
        try:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except Exception as exc:
            full = disk_full_error(exc, self.checkpoints, _checkpoint_bytes(trainer))
            if full is not None:
                raise full from exc
            raise
        # With --bf16 / --fp16 the trainer's accelerator wraps the model's forward in autocast and leaves it there;
        # what is measured after training (the teacher's dev gap) must see the model in the precision it is saved in.
        trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
        return resume

    def save(self, write: Callable[[Path], None], model: torch.nn.Module | None = None) -> Path:
        """``write(folder)`` fills a temporary folder that replaces ``output_dir`` in one rename (on the main
        process), then the checkpoints are removed; every process waits until the output is on disk. A ``model``
        with a weight that is not finite is never written (:class:`NonFiniteTrainingError`)."""
        if model is not None:
            check_finite_weights(model, self.what)
        if distributed.is_main():
            with atomic_path(self.output_dir, is_dir=True, overwrite=self.overwrite, kind=self.kind) as tmp:
                write(tmp)
            shutil.rmtree(self.checkpoints, ignore_errors=True)
        distributed.barrier()
        return self.output_dir


class NonFiniteTrainingError(RuntimeError):
    """A training whose loss, gradients or weights stopped being finite numbers: stopped, nothing saved."""


class FiniteTrainingGuard(TrainerCallback):
    """Stops a host trainer at the first optimizer step whose loss, a part of it (a loss returning a dict, as
    :class:`~md2pr_st.losses.MD2PRLoss` does) or gradient norm is NaN or infinite, with the step, the loss parts
    and the likely cause; :class:`TrainingRun` adds it to every training.

    The loss is read from the trainer's loss module as it runs (a forward hook: the host's logging replaces a NaN
    loss by the window's average), the gradients just before the optimizer applies them.
    """

    def __init__(self, trainer: Any, what: str = "training", checkpoints: str | Path | None = None) -> None:
        self.what, self.checkpoints = what, checkpoints
        self.parts: dict[str, torch.Tensor] = {}
        losses = trainer.loss.values() if isinstance(getattr(trainer, "loss", None), dict) else [trainer.loss]
        self.hooks = [m.register_forward_hook(self._record) for m in losses if isinstance(m, torch.nn.Module)]

    def _record(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if not torch.is_grad_enabled():
            return  # an evaluation pass
        values = output if isinstance(output, dict) else {"loss": output}
        for name, value in values.items():
            if torch.is_tensor(value) and value.numel() == 1:
                value = value.detach().float().reshape(())
                self.parts[name] = self.parts[name] + value if name in self.parts else value

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        parts = {name: float(value) for name, value in self.parts.items()}
        self.parts = {}
        grads = [p.grad for p in (model.parameters() if model is not None else []) if p.grad is not None]
        norm = (
            float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
            if grads
            else 0.0
        )
        if all(math.isfinite(v) for v in parts.values()) and math.isfinite(norm):
            return
        shown = ", ".join(f"{name} {value:.4g}" for name, value in parts.items()) or "not recorded"
        raise NonFiniteTrainingError(
            f"The {self.what} stopped at step {state.global_step + 1}: the loss ({shown}) or the gradient norm "
            f"({norm:.4g}) is not a finite number. Likely cause: {_likely_cause(args, state, parts)} Nothing was "
            f"saved{self._resume_hint()}."
        )

    def _resume_hint(self) -> str:
        if self.checkpoints and last_complete_checkpoint(self.checkpoints) is not None:
            return f"; run again with --overwrite (overwrite=True) to discard the checkpoints in {self.checkpoints}"
        return ""

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for hook in self.hooks:
            hook.remove()


def _likely_cause(args: Any, state: Any, parts: dict[str, float]) -> str:
    """The likeliest reason a training's numbers stopped being finite, from its settings."""
    if args.learning_rate > 1e-2:
        return f"the learning rate {args.learning_rate:g} is far too high for fine-tuning; try 1e-5 to 1e-4."
    if args.weight_decay > 1:
        return f"the weight decay {args.weight_decay:g} is far too high; try 0 to 0.1."
    if getattr(args, "fp16", False):
        return "fp16 overflowed; train in bf16 or in full precision."
    if state.global_step == 0 and parts and not all(math.isfinite(v) for v in parts.values()):
        return (
            "the first step's loss is already not finite: check the training rows' scores (labels) for NaN or "
            "infinite values, and the loss temperatures."
        )
    return "the training diverged; lower the learning rate, or clip gradients (--max_grad_norm 1)."


def check_finite_weights(model: torch.nn.Module, what: str = "training") -> None:
    """Raise :class:`NonFiniteTrainingError` when a weight of ``model`` is NaN or infinite: such a model is never
    saved.

    Example:
        >>> layer = torch.nn.Linear(2, 2)
        >>> check_finite_weights(layer)
        >>> _ = torch.nn.init.constant_(layer.bias, float("nan"))
        >>> check_finite_weights(layer)
        Traceback (most recent call last):
        ...
        md2pr_st.training.NonFiniteTrainingError: The training produced weights that are not finite numbers (bias: \
2 of 2 values)...
    """
    bad = [
        (name, int((~torch.isfinite(tensor)).sum()), tensor.numel())
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        shown = ", ".join(f"{name}: {count} of {total} values" for name, count, total in bad[:3])
        more = f" and {len(bad) - 3} more tensors" if len(bad) > 3 else ""
        raise NonFiniteTrainingError(
            f"The {what} produced weights that are not finite numbers ({shown}{more}); the model was not saved. "
            "Lower the learning rate or the weight decay and train again."
        )


def _checkpoint_bytes(trainer: Any) -> int | None:
    """The size of one checkpoint of ``trainer``'s model: its weights and Adam's two moments of each."""
    model = getattr(trainer, "model", None)
    if not isinstance(model, torch.nn.Module):
        return None
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters())


def last_complete_checkpoint(folder: str | Path) -> Path | None:
    """The ``checkpoint-N`` in ``folder`` with the highest ``N`` that the host trainer finished writing, or None.

    The trainer writes a checkpoint's ``trainer_state.json`` last, so a checkpoint is complete iff that file parses.
    A process killed while writing a checkpoint leaves a ``checkpoint-N`` without weights or state;
    ``trainer.train(resume_from_checkpoint=True)`` takes the highest ``N`` whatever it holds and then fails, at
    every rerun. Incomplete checkpoints are deleted here; resume from the returned path instead.
    """
    complete = []
    for path in Path(folder).glob("checkpoint-*"):
        if not path.is_dir() or not path.name.split("-")[-1].isdigit():
            continue
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("Deleting the incomplete checkpoint %s (its writer was interrupted)", path)
            shutil.rmtree(path, ignore_errors=True)
            continue
        complete.append(path)
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


RESUME_FILE = "md2pr_resume.json"


def resume_checkpoint(
    checkpoints: str | Path, record: dict[str, Any], *, overwrite: bool = False, what: str = "training"
) -> Path | None:
    """The checkpoint a training run may resume from: the last complete one, and only when ``record`` (a
    fingerprint of the data, the starting model and every setting that changes the result) equals the one the
    interrupted run wrote next to its checkpoints.

    Checkpoints of another run (other data or settings, or written before records existed) are never resumed:
    :class:`~md2pr_st.outputs.OutputExistsError` names what differs, or, with ``overwrite``, they are deleted and
    training starts again. The record is then written for the next resume.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()) / "student.checkpoints"
        >>> resume_checkpoint(folder, {"data": "abc", "learning_rate": 2e-05}) is None  # nothing to resume yet
        True
        >>> (folder / "checkpoint-5").mkdir()
        >>> _ = (folder / "checkpoint-5" / "trainer_state.json").write_text("{}")
        >>> resume_checkpoint(folder, {"data": "abc", "learning_rate": 2e-05}).name
        'checkpoint-5'
        >>> resume_checkpoint(folder, {"data": "xyz", "learning_rate": 2e-05})
        Traceback (most recent call last):
        ...
        md2pr_st.outputs.OutputExistsError: ... holds checkpoints of an interrupted training run made with other data...
    """
    last = _resume_checkpoint(checkpoints, record, overwrite, what) if distributed.is_main() else None
    last = distributed.broadcast(last)  # the main process decides (and writes) for every launched process
    if last is not None:
        logger.info("Resuming %s from %s", what, last)
    return last


def _resume_checkpoint(checkpoints: str | Path, record: dict[str, Any], overwrite: bool, what: str) -> Path | None:
    checkpoints = Path(checkpoints)
    record = json.loads(json.dumps(record, sort_keys=True, default=str))
    last = last_complete_checkpoint(checkpoints) if checkpoints.is_dir() else None
    try:
        saved = json.loads((checkpoints / RESUME_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    if last is not None and saved != record:
        if not overwrite:
            differs = sorted(k for k in {*record, *saved} if saved.get(k) != record.get(k)) if saved else []
            raise OutputExistsError(
                f"{checkpoints} holds checkpoints of an interrupted {what} run made with other "
                f"{', '.join(differs) if differs else 'inputs (no record of them)'}; resuming them would train "
                "the wrong model. Run again with the same inputs to resume, or pass --overwrite (overwrite=True) to "
                "discard them and start again."
            )
        logger.warning("Discarding %s: checkpoints of a %s run with other inputs.", checkpoints, what)
        shutil.rmtree(checkpoints)
        last = None
    prepare_output_dir(checkpoints, overwrite=overwrite, kind="checkpoints")
    write_json(checkpoints / RESUME_FILE, record)
    return last


# Settings md2pr manages itself in the host's training arguments: where checkpoints go (next to the output, for
# resuming) cannot be moved by an override.
MANAGED_TRAINING_ARGUMENTS = ("output_dir",)


def training_arguments(defaults: dict[str, Any], overrides: Any = None) -> dict[str, Any]:
    """The keyword arguments of the host's ``*TrainingArguments``: md2pr's ``defaults`` with the user's ``overrides``
    (any other option of those classes: ``gradient_accumulation_steps``, ``bf16``, ``max_steps``, ``report_to``,
    evaluation and save strategies, ...) on top. The overrides' numbers are checked (finite, in range:
    :func:`~md2pr_st.validation.check_trainer_options`); a ``warmup_ratio`` is the share of steps that warms up,
    which the host (transformers 5) reads from ``warmup_steps`` below 1.

    Example:
        >>> training_arguments({"learning_rate": 2e-5, "output_dir": "x"}, {"learning_rate": 1e-5, "bf16": True})
        {'learning_rate': 1e-05, 'output_dir': 'x', 'bf16': True}
        >>> training_arguments({"warmup_steps": 0.1}, {"warmup_ratio": 0.3})
        {'warmup_steps': 0.3}
    """
    overrides = dict(overrides or {})
    check_trainer_options(overrides)
    ratio = overrides.pop("warmup_ratio", None)
    if ratio is not None and "warmup_steps" not in overrides:
        overrides["warmup_steps"] = float(ratio)
    if distributed.active() and "use_cpu" not in overrides:
        if not torch.cuda.is_available():  # several processes train as one job on CPUs only with use_cpu
            defaults = {**defaults, "use_cpu": True}
    managed = sorted(set(overrides) & set(MANAGED_TRAINING_ARGUMENTS))
    if managed:
        raise ValueError(
            f"The training argument(s) {managed} are set by md2pr (checkpoints go next to the output folder, so that "
            "an interrupted run resumes): give the output folder instead."
        )
    return {**defaults, **overrides}
