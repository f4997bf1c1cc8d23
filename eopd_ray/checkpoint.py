"""Checkpoint folders of a run: ``output_dir/checkpoints/step_N/``.

A checkpoint is written aside (``step_N.partial``) and renamed when complete, so a kill during a
save never leaves a folder that looks complete. Its last file is ``manifest.json``: the SHA-256 and
size of every other file, computed at save. Resume verifies them before the learner loads the
DeepSpeed state, which DeepSpeed unpickles with ``weights_only=False`` (arbitrary code): a state
that is not the one this run wrote is refused with one line instead of being executed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
_BLOCK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint that must not be resumed from; the message is one line."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> Path:
    """Record the checksum and size of every file under ``folder`` in ``folder/manifest.json``."""
    entries = {
        str(p.relative_to(folder)): {"sha256": sha256(p), "bytes": p.stat().st_size}
        for p in _files(folder)
    }
    path = folder / MANIFEST
    path.write_text(json.dumps({"files": entries}, indent=1))
    return path


def verify_manifest(folder: Path) -> None:
    """Raise CheckpointError unless every file of the manifest is present and unchanged and no
    file was added (a checkpoint written before manifests existed has none and is refused too)."""
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST}; refusing to load an unverified state")
    try:
        entries = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}: not a valid manifest") from None
    present = {str(p.relative_to(folder)) for p in _files(folder)}
    extra = sorted(present - set(entries))
    if extra:
        raise CheckpointError(f"{folder}: files not in its manifest: {', '.join(extra[:3])}")
    for name, entry in entries.items():
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"{folder}: {name} is missing")
        if file.stat().st_size != entry["bytes"] or sha256(file) != entry["sha256"]:
            raise CheckpointError(f"{folder}: {name} differs from its checksum at save")


def complete_checkpoints(out: Path) -> list[Path]:
    """``step_N`` folders with their trainer state, oldest first (``.partial`` ones excluded)."""
    steps = (
        p
        for p in (out / "checkpoints").glob("step_*")
        if p.name[5:].isdigit() and (p / STATE).is_file()
    )
    return sorted(steps, key=lambda p: int(p.name[5:]))
