"""Configuration: CLI flags > environment (`NORMSCOPE_*`) > config file > defaults.

The file is `normscope.toml` (keys at top level) or the `[tool.normscope]` table of a
`pyproject.toml`, whichever is found first searching upward from the run path, then from the
current directory; in one directory `normscope.toml` wins, as ruff does with `ruff.toml`.

Every value remembers where it came from (`Origin`), so a failed check can point at the line of
the config file that set the limit. Unknown keys and wrong types raise `ConfigError` naming the
key and the file. The schema is the dataclasses below: adding a section is adding a dataclass.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normscope.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

CONFIG_FILENAME = "normscope.toml"
PYPROJECT = "pyproject.toml"
ENV_PREFIX = "NORMSCOPE_"


@dataclass(frozen=True)
class CheckConfig:
    """`[tool.normscope.check]`: the rules of `normscope check`. None switches a rule off."""

    nonfinite: bool = True  # fail on any NaN/Inf weight
    kinds: tuple[str, ...] = ("weight",)  # parameter kinds the per-layer and total rules look at
    growth_measure: str = field(default="last_first", metadata={"choices": ("last_first", "max_min")})
    # per-layer norm ratio must stay <= this
    max_growth: float | None = field(default=None, metadata={"above": 0})
    # per-layer norm ratio must stay >= this (collapse)
    min_growth: float | None = field(default=None, metadata={"min": 0})
    # total norm over `kinds`, every snapshot
    min_total_norm: float | None = field(default=None, metadata={"min": 0})
    max_total_norm: float | None = field(default=None, metadata={"min": 0})
    # a bounce of the total squared norm must happen by this epoch; "none": no bounce may happen
    bounce_by_epoch: float | str | None = field(default=None, metadata={"choices": ("none",), "min": 0})
    # measured / predicted, scale-invariant layers
    equilibrium_min_ratio: float | None = field(default=None, metadata={"min": 0})
    equilibrium_max_ratio: float | None = field(default=None, metadata={"above": 0})
    baseline: str | None = None  # path of a baseline run to compare against
    # per-layer relative norm difference allowed against the baseline
    baseline_rtol: float = field(default=0.05, metadata={"min": 0})
    baseline_atol: float = field(default=0.0, metadata={"min": 0})
    warn: tuple[str, ...] = ()  # rule names whose failures are warnings (exit 0), not errors

    def __post_init__(self) -> None:
        _check_bounds(self)


@dataclass(frozen=True)
class NormscopeConfig:
    """`[tool.normscope]`: loading options shared by the commands, plus per-command sections."""

    include: tuple[str, ...] = ()  # glob patterns of parameter names to keep
    exclude: tuple[str, ...] = ()
    every: int = field(default=1, metadata={"min": 1})  # use every n-th snapshot
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})
    check: CheckConfig = field(default_factory=CheckConfig)

    def __post_init__(self) -> None:
        _check_bounds(self)

    def reading(self) -> dict[str, Any]:
        """The keys that choose what of a run is read, as `RunOptions` fields (what every command
        that reads a run, and `check_path`, read it with)."""
        return {"include": tuple(self.include), "exclude": tuple(self.exclude), "every": self.every,
                "device": self.device}


@dataclass(frozen=True)
class Origin:
    """Where one value came from: "default", "file", "env" or "flag", with file/line or variable."""

    kind: str
    file: str | None = None
    line: int | None = None
    name: str | None = None  # environment variable or flag

    def describe(self) -> str:
        if self.kind == "file":
            return f"{self.file}:{self.line}" if self.line else str(self.file)
        if self.kind in ("env", "flag"):
            return f"{self.kind} {self.name}"
        return self.kind


@dataclass(frozen=True)
class ResolvedConfig:
    """The merged configuration, the file it read (if any), and each non-default value's origin."""

    config: NormscopeConfig
    file: Path | None = None
    origins: Mapping[str, Origin] = field(default_factory=dict)  # "check.max_growth" -> Origin

    def origin(self, key: str) -> Origin:
        return self.origins.get(key, Origin("default"))


# ---------------------------------------------------------------------------------------------
# discovery and reading


def find_config_file(start: str | os.PathLike[str]) -> Path | None:
    """The nearest normscope.toml, or pyproject.toml with a [tool.normscope] table, at or above start."""
    here = Path(start).resolve()
    if not here.is_dir():
        here = here.parent
    for directory in (here, *here.parents):
        candidate = directory / CONFIG_FILENAME
        if _is_file(candidate):
            return candidate
        pyproject = directory / PYPROJECT
        if _is_file(pyproject) and "normscope" in _read_toml(pyproject).get("tool", {}):
            return pyproject
    return None


def _is_file(path: Path) -> bool:
    """A directory the user cannot look into holds no config file they could have meant."""
    try:
        return path.is_file()
    except OSError:
        return False


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or table
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _is_tool_file(path: Path, data: dict[str, Any]) -> bool:
    """pyproject.toml, or any file (e.g. `--config ci.toml`) holding only a [tool...] table."""
    return path.name == PYPROJECT or (bool(data) and set(data) == {"tool"})


def read_config_table(path: Path) -> dict[str, Any]:
    """The normscope table of a config file ({} for a pyproject.toml without one)."""
    data = _read_toml(path)
    if _is_tool_file(path, data):
        table = data.get("tool", {}).get("normscope", {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [tool.normscope] must be a table")
        return table
    return data


def _key_lines(path: Path) -> dict[str, int]:
    """Line number of each `key =` in the file, under its dotted table name (best effort, for pointers)."""
    lines: dict[str, int] = {}
    section = ""
    prefix = "tool.normscope." if _is_tool_file(path, _read_toml(path)) else ""
    header = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")
    assignment = re.compile(r"^\s*([A-Za-z0-9_\-\"'.]+)\s*=")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return lines
    for number, raw in enumerate(text.splitlines(), start=1):
        if match := header.match(raw):
            section = match.group(1).replace(" ", "") + "."
            continue
        if match := assignment.match(raw):
            dotted = section + match.group(1).strip("\"'")
            if prefix and not dotted.startswith(prefix):
                continue
            lines.setdefault(dotted.removeprefix(prefix), number)
    return lines


# ---------------------------------------------------------------------------------------------
# validation against the dataclass schema


def _schema(cls: type) -> dict[str, tuple[Any, dataclasses.Field[Any]]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls)}


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _members(tp: Any) -> tuple[Any, ...]:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return typing.get_args(tp)
    return (tp,)


def _type_name(tp: Any) -> str:
    names = []
    for member in _members(tp):
        if member is type(None):
            continue
        if typing.get_origin(member) is tuple:
            names.append("list of strings")
        else:
            names.append({bool: "true/false", int: "integer", float: "number", str: "string"}[member])
    return " or ".join(names)


def _coerce(value: Any, tp: Any, meta: Mapping[str, Any], where: str) -> Any:
    """Check a TOML (or already parsed) value against a field type; return it normalised."""
    members = _members(tp)
    choices = meta.get("choices")
    for member in members:
        if member is type(None):
            continue
        if member is bool and isinstance(value, bool):
            return value
        if member is int and isinstance(value, int) and not isinstance(value, bool):
            return _in_range(value, meta, where)
        if member is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return _in_range(float(value), meta, where)
        if member is str and isinstance(value, str):
            if choices and value not in choices:
                raise ConfigError(f"{where}: must be {_type_name(tp)} ({' or '.join(choices)}), got {value!r}")
            return value
        if (typing.get_origin(member) is tuple and isinstance(value, (list, tuple))
                and all(isinstance(item, str) for item in value)):
            return tuple(value)
    raise ConfigError(f"{where}: must be {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _check_bounds(section: Any) -> None:
    """The numbers of a config section built in Python held to the bounds the file's are held to."""
    for fld in dataclasses.fields(section):
        value = getattr(section, fld.name)
        if ("min" in fld.metadata or "above" in fld.metadata) and type(value) in (int, float):
            _in_range(value, fld.metadata, f"{type(section).__name__}.{fld.name}")


def _in_range(value: float, meta: Mapping[str, Any], where: str) -> Any:
    """`value` if it is a finite number within the field's bounds (`min`, or `above` for a strict
    one); a limit of NaN or infinity, or a negative ratio, would make a rule pass or fail whatever
    the run does, so it is a configuration error."""
    if not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{where}: must be at least {meta['min']}, got {value!r}")
    if "above" in meta and value <= meta["above"]:
        raise ConfigError(f"{where}: must be above {meta['above']}, got {value!r}")
    return value


def _parse_text(text: str, tp: Any, meta: Mapping[str, Any], where: str) -> Any:
    """Turn an environment or flag string into a value of the field's type."""
    stripped = text.strip()
    members = _members(tp)
    if type(None) in members and stripped.lower() in ("", "null", "unset"):
        return None
    for member in members:
        if member is bool:
            lowered = stripped.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        elif member is int:
            try:
                return _in_range(int(stripped), meta, where)
            except ValueError:
                pass
        elif member is float:
            try:
                return _in_range(float(stripped), meta, where)
            except ValueError:
                pass
        elif typing.get_origin(member) is tuple:
            return tuple(item.strip() for item in stripped.split(",") if item.strip())
    return _coerce(stripped, tp, meta, where)


def _build(cls: type, table: Mapping[str, Any], path: str, file: Path | None,
           lines: Mapping[str, int], origins: dict[str, Origin]) -> Any:
    schema = _schema(cls)
    values: dict[str, Any] = {}
    where_file = f"{file}: " if file else ""
    for key, raw in table.items():
        dotted = f"{path}{key}"
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(f"{where_file}unknown key '{dotted}' (known: {known})")
        tp, fld = schema[key]
        if _is_section(tp):
            if not isinstance(raw, dict):
                raise ConfigError(f"{where_file}'{dotted}' must be a table")
            values[key] = _build(tp, raw, dotted + ".", file, lines, origins)
            continue
        values[key] = _coerce(raw, tp, fld.metadata, f"{where_file}key '{dotted}'")
        origins[dotted] = Origin("file", file=str(file) if file else None, line=lines.get(dotted))
    return cls(**values)


def _overlay(config: Any, updates: Mapping[str, Any]) -> Any:
    """A copy of a nested config dataclass with dotted keys replaced."""
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for dotted, value in updates.items():
        head, dot, rest = dotted.partition(".")
        if dot:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[head] = value
    for head, sub in nested.items():
        flat[head] = _overlay(getattr(config, head), sub)
    return dataclasses.replace(config, **flat)


def field_spec(dotted: str) -> tuple[Any, Mapping[str, Any]]:
    """Type and metadata of a dotted key; ConfigError if there is no such key."""
    cls: Any = NormscopeConfig
    parts = dotted.split(".")
    for index, part in enumerate(parts):
        schema = _schema(cls)
        if part not in schema:
            raise ConfigError(f"unknown key '{dotted}'")
        tp, fld = schema[part]
        if index == len(parts) - 1:
            if _is_section(tp):
                raise ConfigError(f"'{dotted}' is a section, not a key")
            return tp, fld.metadata
        if not _is_section(tp):
            raise ConfigError(f"unknown key '{dotted}'")
        cls = tp
    raise ConfigError(f"unknown key '{dotted}'")  # pragma: no cover - loop always returns


def _env_key(name: str) -> str | None:
    """NORMSCOPE_CHECK_MAX_GROWTH -> "check.max_growth" when that key exists."""
    rest = name[len(ENV_PREFIX):].lower()
    for section, (tp, _) in _schema(NormscopeConfig).items():
        if _is_section(tp) and rest.startswith(section + "_"):
            return f"{section}.{rest[len(section) + 1:]}"
    return rest


def environment_overrides(environ: Mapping[str, str]) -> dict[str, tuple[Any, Origin]]:
    """Parsed NORMSCOPE_* settings. Unknown names inside a section (NORMSCOPE_CHECK_*) are errors;
    other NORMSCOPE_* names (NORMSCOPE_DEBUG, ...) belong to other parts and are left alone."""
    sections = {name for name, (tp, _) in _schema(NormscopeConfig).items() if _is_section(tp)}
    found: dict[str, tuple[Any, Origin]] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        dotted = _env_key(name)
        if dotted is None:
            continue
        in_section = dotted.partition(".")[0] in sections and "." in dotted
        try:
            tp, meta = field_spec(dotted)
        except ConfigError:
            if in_section:
                raise ConfigError(f"environment variable {name}: unknown key '{dotted}'") from None
            continue
        found[dotted] = (_parse_text(text, tp, meta, f"environment variable {name}"), Origin("env", name=name))
    return found


def load_config(
    run_path: str | os.PathLike[str] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> ResolvedConfig:
    """Merge defaults, the config file, the environment and flags (dotted keys, None = not given).

    `config_file` (the `--config` flag) skips discovery. A relative `check.baseline` in a file is
    taken relative to that file's directory.
    """
    environ = os.environ if environ is None else environ
    origins: dict[str, Origin] = {}
    file: Path | None = None
    if config_file is not None:
        file = Path(config_file)
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
    else:
        explicit = environ.get(ENV_PREFIX + "CONFIG")
        if explicit:
            file = Path(explicit)
            if not file.is_file():
                raise ConfigError(f"config file not found: {file} (from NORMSCOPE_CONFIG)")
        else:
            starts = [p for p in (run_path, cwd if cwd is not None else Path.cwd()) if p is not None]
            for start in starts:
                if Path(start).exists() and (file := find_config_file(start)) is not None:
                    break
    config = NormscopeConfig()
    if file is not None:
        table = read_config_table(file)
        config = _build(NormscopeConfig, table, "", file, _key_lines(file), origins)
        baseline = config.check.baseline
        if baseline is not None and not Path(baseline).is_absolute():
            config = _overlay(config, {"check.baseline": str(file.parent / baseline)})
    updates: dict[str, Any] = {}
    for dotted, (value, origin) in environment_overrides(environ).items():
        updates[dotted] = value
        origins[dotted] = origin
    for dotted, value in (flags or {}).items():
        if value is None:
            continue
        tp, meta = field_spec(dotted)
        flag = "--" + dotted.rpartition(".")[2].replace("_", "-")
        updates[dotted] = _parse_text(value, tp, meta, f"flag {flag}") if isinstance(value, str) \
            else _coerce(value, tp, meta, f"flag {flag}")
        origins[dotted] = Origin("flag", name=flag)
    if updates:
        config = _overlay(config, updates)
    return ResolvedConfig(config=config, file=file, origins=origins)


__all__ = [
    "CheckConfig",
    "NormscopeConfig",
    "Origin",
    "ResolvedConfig",
    "environment_overrides",
    "field_spec",
    "find_config_file",
    "load_config",
    "read_config_table",
]
