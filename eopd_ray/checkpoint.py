"""Checkpoint folders of a run: ``output_dir/checkpoints/step_N/``: saving, verifying, resuming.

A checkpoint holds the learner's Hugging Face folder and DeepSpeed state and ``trainer_state.json``:
the iteration, the policy version, the prompt stream's position, the prompts taken from it but not
trained on yet (in flight, buffered, waiting to be re-sampled: re-admitted first on resume, so each
prompt is trained exactly once per epoch) and the pipeline's cumulative counters.

A checkpoint is written aside (``step_N.partial``) and renamed when complete, so a kill during a
save never leaves a folder that looks complete. Its last file is ``manifest.json``: the SHA-256 and
size of every other file, computed at save. Resume verifies them before the learner loads the
DeepSpeed state, which DeepSpeed unpickles with ``weights_only=False`` (arbitrary code): a state
that is not the one this run wrote is refused with one line instead of being executed.

Rotation (``pipeline.keep_checkpoints``): once a checkpoint is complete, only the newest N complete
ones are kept (the one just written always, so the final one too), and folders of saves that
never completed (``.partial``) older than it are removed. A folder is renamed before it is
deleted, so a kill mid-delete never leaves something that looks like a complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eopd_ray.running import Roles

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
_BLOCK = 1 << 20
# The data state of a run that has no checkpoint yet (a learner restarted from student.path).
_INITIAL: dict[str, Any] = {
    "iteration": 0,
    "prompt_position": 0,
    "pending_prompts": [],
    "pipeline": {},
}


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


def save_checkpoint(roles: Roles, out: Path, iteration: int) -> Path:
    """``checkpoints/step_N``: HF folder + learner state + checksums, written aside then renamed."""
    final = out / "checkpoints" / f"step_{iteration}"
    if final.exists():
        return final
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    roles.learner.save_checkpoint(tmp)
    state = {
        "iteration": iteration,
        "version": roles.learner.version,
        "prompt_position": roles.stream.position,
        # taken from the stream but not trained on yet: admitted again first on resume
        "pending_prompts": roles.pipeline.pending_prompt_ids(),
        "pipeline": roles.pipeline.state(),
    }
    (tmp / STATE).write_text(json.dumps(state, indent=1))
    write_manifest(tmp)
    tmp.rename(final)
    prune_checkpoints(out, roles.pipeline.config.keep_checkpoints, final)
    return final


def _step(folder: Path) -> int | None:
    """N of ``step_N``, ``step_N.partial`` and the like; None for other names."""
    digits = folder.name[5:].split(".", 1)[0]
    return int(digits) if folder.name.startswith("step_") and digits.isdigit() else None


def prune_checkpoints(out: Path, keep: int | None, written: Path) -> list[Path]:
    """After ``written`` completed: remove all but the newest ``keep`` complete checkpoints (all
    kept for None; ``written`` always) and every incomplete ``step_*`` folder older than the
    newest complete one. Returns the removed folders."""
    complete = complete_checkpoints(out)
    if not complete:
        return []
    newest = _step(complete[-1])
    assert newest is not None
    doomed = [] if keep is None else [p for p in complete[:-keep] if p != written]
    known = set(complete)
    for folder in (out / "checkpoints").glob("step_*"):
        step = _step(folder)
        if folder not in known and folder.is_dir() and step is not None and step < newest:
            doomed.append(folder)
    for folder in doomed:
        shutil.rmtree(_trash(folder), ignore_errors=True)
    return doomed


def _trash(folder: Path) -> Path:
    """``folder`` renamed to ``*.deleting`` (not a complete checkpoint, even half deleted)."""
    if folder.name.endswith(".deleting"):
        return folder
    trash = folder.with_name(folder.name + ".deleting")
    shutil.rmtree(trash, ignore_errors=True)
    return folder.rename(trash)


def resume(roles: Roles, out: Path) -> tuple[int, int]:
    """(start iteration, policy version): from the newest complete checkpoint, if any; its files
    are checked against the manifest written at save before anything is loaded."""
    folder = newest_checkpoint(out)
    if folder is None:
        return 0, roles.learner.version
    verify_manifest(folder)
    version = roles.learner.load_checkpoint(folder)
    return restore_data(roles, folder), version


def restore_data(roles: Roles, folder: Path | None) -> int:
    """Point samplers, prompt stream and pipeline at ``folder``'s state (None: the start); the
    learner already holds its weights. Returns the checkpoint's iteration."""
    state = json.loads((folder / STATE).read_text()) if folder else _INITIAL
    if roles.samplers.needs_weights:  # kd's replayed responses need none
        roles.samplers.push_weights(roles.learner, roles.learner.version)
    roles.stream.position = state["prompt_position"]
    by_id = {request[0]: request for request in roles.stream.rows}
    roles.pipeline.requeue([by_id[pid] for pid in state["pending_prompts"]])
    roles.pipeline.restore(state["pipeline"])
    return state["iteration"]


def complete_checkpoints(out: Path) -> list[Path]:
    """``step_N`` folders with their trainer state, oldest first (``.partial`` ones excluded)."""
    steps = (
        p
        for p in (out / "checkpoints").glob("step_*")
        if p.name[5:].isdigit() and (p / STATE).is_file()
    )
    return sorted(steps, key=lambda p: int(p.name[5:]))


def newest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (a Ctrl-C mid-save leaves ``step_N.partial``), or None."""
    steps = complete_checkpoints(out)
    return steps[-1] if steps else None
