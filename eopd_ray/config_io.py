"""Loading a typed config: YAML presets plus ``key=value`` overrides, validated at load time.

Every config of the project (``RunConfig`` in ``config.py``, ``EvalConfig``, ``ToyConfig``) is a
tree of :class:`Section` models with ``extra="forbid"``, so a misspelt key, a value of the wrong
type or one out of range is rejected when the file is loaded, with one line that names the file
and the dotted key, e.g.::

    configs/tiny.yaml: loss.tau: Input should be greater than or equal to 0 (got -1.0)

Overrides use dotted paths and YAML scalars: ``loss.tau=1.0 optim.lr=3e-6 loss.variant=opd``.

Paths are resolved once, at load, against the directory the command was started in
(``base_dir=Path.cwd()``): every role (a learner worker runs in a directory of
its own) then reads and writes the same folders. A model path that does not exist locally stays a
Hugging Face hub id only if it has the hub's ``owner/name`` form; anything else is a local path,
checked before Ray starts (``eopd_ray/preflight.py``), so a typo never goes to the hub.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
)


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line meant for the user."""


class Section(BaseModel):
    # allow_inf_nan=False: ``optim.lr=.inf`` or ``loss.tau=nan`` is refused at load.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# A hub id is ``owner/name`` (letters, digits, ``-_.``); a missing folder of any other shape is a
# local path that does not exist, reported as such instead of a 47 s hub look-up.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(path: str, base_dir: Path | None = None) -> bool:
    """True when ``path`` is not a local file or folder (relative paths: under ``base_dir``, or
    the working directory) but has the shape of a hub model id."""
    local = Path(path).expanduser()
    if base_dir is not None:
        local = base_dir / local
    return not local.exists() and bool(_HUB_ID.match(path))


def _base_dir(info: ValidationInfo) -> Path | None:
    context = info.context if isinstance(info.context, dict) else {}
    return context.get("base_dir")


def _resolve_local(value: str, info: ValidationInfo) -> str:
    base = _base_dir(info)
    return value if base is None else str((base / Path(value).expanduser()).resolve())


def _resolve_model(value: str, info: ValidationInfo) -> str:
    """Local folders become absolute; hub ids (``owner/name``, not present here) stay as given."""
    base = _base_dir(info)
    if base is None or is_hub_id(value, base):
        return value
    return _resolve_local(value, info)


# Paths in a config: resolved when loaded with a base directory (what the CLI does).
LocalPath = Annotated[str, Field(min_length=1), AfterValidator(_resolve_local)]
ModelPath = Annotated[str, Field(min_length=1), AfterValidator(_resolve_model)]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}``; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: expected key=value, e.g. loss.tau=0.8")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse value ({exc.problem})") from None
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is set both as a value and a section")
            node = child
        node[leaf] = value
    return tree


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind == "missing":
        return f"{key}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if "input" in error and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    return f"{key}: {message}"


def validate_data(
    data: dict[str, Any], source: str, model: type[BaseModel], base_dir: Path | None = None
) -> Any:
    """Build ``model`` from ``data``; raise ConfigError naming ``source`` and every bad key.

    With ``base_dir``, relative paths become absolute against it (see the module docstring)."""
    context = None if base_dir is None else {"base_dir": Path(base_dir).resolve()}
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load_yaml(
    path: str | Path,
    overrides: list[str] | None,
    model: type[BaseModel],
    base_dir: Path | None = None,
) -> Any:
    """Load a YAML preset, apply ``key=value`` overrides, and validate the result as ``model``.

    ``base_dir``: resolve relative paths against it (the CLI passes the working directory)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    source = str(path)
    if overrides:
        data = _merge(data, parse_overrides(overrides))
        source += " with overrides " + " ".join(overrides)
    return validate_data(data, source, model, base_dir)


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML, written next to every run's outputs."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
