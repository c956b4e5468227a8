"""A command's options as one JSON / YAML file (``md2pr train config.yaml``): read, and checked before any work.

The file must exist, be UTF-8, parse, hold a mapping, name each option once (a key given twice is refused, not
silently the last one) and name only options the command has (an unknown key is refused with the nearest option's
name). Only the standard library and PyYAML are imported.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file that cannot be read as the command's options; the message names the file."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives a key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key: the loader's own error
            if key in lines:
                raise ConfigError(
                    f"line {line}: the key {key!r} is given twice (also at line {lines[key]}); keep one."
                )
            lines[key] = line
        return super().construct_mapping(node, deep)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise ConfigError(f"the key {twice[0]!r} is given twice; keep one.")
    return dict(pairs)


def read_config(path: str | Path) -> dict[str, Any]:
    """The mapping of a JSON / YAML config file; :class:`ConfigError` names the file, and the line where it can.

    Example:
        >>> import tempfile
        >>> config = Path(tempfile.mkdtemp()) / "c.yaml"
        >>> _ = config.write_text("epochs: 1\\nbatch_size: 8\\nepochs: 2\\n")
        >>> read_config(config)
        Traceback (most recent call last):
        ...
        md2pr_st.cli.config_file.ConfigError: .../c.yaml: line 3: the key 'epochs' is given twice (also at line 1); \
keep one.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: byte {exc.start} ({raw[exc.start]:#04x}) is not UTF-8; save the file as UTF-8."
        ) from None
    try:
        if path.suffix == ".json":
            data = json.loads(text, object_pairs_hook=_unique_pairs)
        else:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}).") from None
    except yaml.YAMLError as exc:  # its message names the line and column
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values, got a {type(data).__name__}.")
    return data


def check_keys(path: str | Path, data: dict[str, Any], known: Collection[str], command: str) -> None:
    """Refuse the keys of ``data`` that are not options of ``command`` (``known``), naming the nearest option.

    Example:
        >>> check_keys("c.yaml", {"output": "runs/x"}, ["output_dir", "input"], "md2pr train")
        Traceback (most recent call last):
        ...
        md2pr_st.cli.config_file.ConfigError: c.yaml: 'output' is not an option of md2pr train (did you mean \
'output_dir'?).
    """
    unknown = [key for key in data if key not in known]
    if not unknown:
        return
    key = str(unknown[0])
    near = difflib.get_close_matches(key.replace("-", "_"), sorted(known), n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]!r}?)" if near else f" (`{command} --help` lists them)"
    more = f"; {len(unknown) - 1} more unknown key(s)" if len(unknown) > 1 else ""
    raise ConfigError(f"{path}: {key!r} is not an option of {command}{hint}{more}.")
