"""The quality grid (benchmarks/quality.py) runs the teacher only when it is the training that scored its rows."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_grid", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _teacher(folder: Path, value: float) -> Path:
    folder.mkdir(parents=True)
    save_file({"w": torch.full((4,), value)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    return folder


def test_teacher_weights_tell_two_trainings_apart_and_ignore_other_files(quality, tmp_path):
    first, second = _teacher(tmp_path / "first", 1.0), _teacher(tmp_path / "second", 2.0)
    digest = quality.teacher_weights(first)
    assert digest != quality.teacher_weights(second)
    (first / "md2pr_teacher.json").write_text('{"train_seconds": 1}')  # reports and configs are not the weights
    assert quality.teacher_weights(first) == digest
    with pytest.raises(RuntimeError, match="holds no \\*.safetensors weights"):
        quality.teacher_weights(tmp_path)


def test_a_recipe_that_runs_the_teacher_is_refused_another_trainings_scores(quality, tmp_path):
    first, second = _teacher(tmp_path / "first", 1.0), _teacher(tmp_path / "second", 2.0)
    recorded = tmp_path / "A" / "fold0" / "candidates.json"
    # no candidates recorded yet: the teacher scores them, nothing to compare with
    assert quality.checked_teacher(lambda: first, recorded) == first
    recorded.parent.mkdir(parents=True)
    recorded.write_text(json.dumps({"teacher_weights": quality.teacher_weights(first), "rows": []}))
    assert quality.checked_teacher(lambda: first, recorded) == first
    with pytest.raises(RuntimeError, match="another training's scores, not those of .*second"):
        quality.checked_teacher(lambda: second, recorded)
    recorded.write_text(json.dumps({"rows": []}))  # recorded before the weights were
    with pytest.raises(RuntimeError, match="unrecorded teacher weights' scores"):
        quality.checked_teacher(lambda: first, recorded)
