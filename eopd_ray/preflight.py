"""Checks that run before Ray starts, so that bad input costs a second and one line, not a minute.

``eopd-ray train`` and ``eopd-ray eval`` call these on the loaded config (whose paths are already
absolute, see ``eopd_ray/config.py``): model folders exist and hold a ``config.json``, hub ids are
left to the hub, the data file exists, and ``output_dir`` can be created and written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from eopd_ray.config import RunConfig, is_named_data
from eopd_ray.config_io import ConfigError, is_hub_id


def check_model_path(key: str, path: str) -> None:
    """A local model folder must exist with a ``config.json``; ``owner/name`` hub ids pass."""
    if is_hub_id(path):
        return
    folder = Path(path)
    if not folder.exists():
        hint = " (build the tiny pair with `eopd-ray tiny-models`)" if "tiny-models" in path else ""
        raise ConfigError(f"{key}: {folder} does not exist{hint}")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{key}: {folder} is not a Hugging Face model folder (no config.json)")


def check_output_dir(path: str, key: str = "output_dir") -> Path:
    """Create ``path`` (and parents) and prove it writable; one line naming the reason if not."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{key}: cannot write to {folder} ({reason})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: cannot write to {folder} (permission denied)")
    return folder


def check_run_config(config: RunConfig) -> None:
    """Everything about a training run that can be checked without Ray."""
    check_model_path("student.path", config.student.path)
    if config.teacher is not None and config.uses_teacher:
        check_model_path("teacher.path", config.teacher.path)
    if not is_named_data(config.data.train) and not Path(config.data.train).is_file():
        raise ConfigError(f"data.train: {config.data.train} does not exist")
    check_output_dir(config.output_dir)
