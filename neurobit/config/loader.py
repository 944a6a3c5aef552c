"""Load, override and validate circuit files; every error names the file, line and key path.

``load_circuit(path, overrides)`` -> :class:`CircuitConfig`, or raises :class:`ConfigError`
with a one-line message ``FILE:LINE: key.path: what is wrong``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from neurobit.config.schema import CircuitConfig
from neurobit.errors import ConfigError

Loc = tuple[Any, ...]


def _line_index(node: yaml.Node, path: Loc = (), out: dict | None = None) -> dict[Loc, int]:
    """Map every key path of a composed YAML node tree to its 1-based line."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[path + (key,)] = k.start_mark.line + 1
            _line_index(v, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_index(v, path + (i,), out)
    return out


def _data_loc(data: Any, loc: Loc) -> Loc:
    """Drop pydantic's union tags from ``loc`` so it follows the user's data."""
    out: list = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
            out.append(part)
        elif isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            cur = cur[part]
            out.append(part)
        elif isinstance(cur, (dict, list)) and isinstance(part, str) and part in (
                "poisson", "current", "spike_file", "image", "text", "cortical_hub"):
            continue  # discriminator tag
        else:
            out.append(part)
            cur = None
    return tuple(out)


def _fmt_path(loc: Loc) -> str:
    return ".".join(str(p) for p in loc) or "<root>"


class _Located:
    """Formats errors with the file and the line of the nearest key path present."""

    def __init__(self, source: str, lines: dict[Loc, int]):
        self.source, self.lines = source, lines

    def error(self, loc: Loc, msg: str) -> ConfigError:
        probe = tuple(loc)
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe)
        where = f"{self.source}:{line}" if line else self.source
        return ConfigError(f"{where}: {_fmt_path(loc)}: {msg}")


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b.0.c=value"`` -> (["a", "b", "0", "c"], yaml-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
    key, value = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {item!r}: empty key path")
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_override(data: dict, keys: list[str], value: Any, item: str) -> None:
    cur: Any = data
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(cur, list):
            if not k.isdigit() or int(k) >= len(cur):
                raise ConfigError(f"--set {item}: {'.'.join(keys[:i + 1])}: no such list index")
            k = int(k)
        elif not isinstance(cur, dict):
            raise ConfigError(f"--set {item}: {'.'.join(keys[:i])} is not a mapping")
        if last:
            cur[k] = value
        else:
            if isinstance(cur, dict) and k not in cur:
                cur[k] = {}
            cur = cur[k]


def load_yaml_text(text: str, source: str) -> tuple[dict, dict[Loc, int]]:
    if not text.strip():
        raise ConfigError(f"{source}: file is empty")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}{line}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: <root>: expected a mapping of keys, got {type(data).__name__}")
    return data, _line_index(node) if node is not None else {}


def read_yaml_file(path: str | Path, overrides: list[str] | tuple[str, ...] = ()
                   ) -> tuple[dict, "_Located"]:
    """Read a YAML config file, apply ``--set`` overrides; returns the data and a locator that
    formats errors as ``FILE:LINE: key.path: message``."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"{source}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not a text (UTF-8) file") from None
    data, lines = load_yaml_text(text, source)
    for item in overrides:
        keys, value = parse_override(item)
        apply_override(data, keys, value, item)
    return data, _Located(source, lines)


def load_circuit(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> CircuitConfig:
    """Read, override (``--set``), validate and cross-check a circuit file."""
    data, where = read_yaml_file(path, overrides)
    return validate_circuit(data, where, base_dir=Path(path).parent)


def validate_circuit(data: dict, where: _Located, base_dir: Path) -> CircuitConfig:
    try:
        cfg = CircuitConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = _data_loc(data, tuple(err["loc"]))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        raise where.error(loc, msg) from None
    from neurobit.config.checks import check_semantics  # local: checks import sim-level helpers

    problems = check_semantics(cfg, base_dir)
    if problems:
        loc, msg = problems[0]
        raise where.error(loc, msg)
    return cfg
