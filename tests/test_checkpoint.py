"""Checkpoint manifests: resume loads only the files this run wrote (DeepSpeed unpickles them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eopd_ray.checkpoint import (
    CheckpointError,
    complete_checkpoints,
    verify_manifest,
    write_manifest,
)


def _checkpoint(folder: Path) -> Path:
    (folder / "deepspeed" / "state").mkdir(parents=True)
    (folder / "deepspeed" / "state" / "mp_rank_00_model_states.pt").write_bytes(b"weights" * 100)
    (folder / "model.safetensors").write_bytes(b"st")
    (folder / "trainer_state.json").write_text("{}")
    write_manifest(folder)
    return folder


def test_an_untouched_checkpoint_verifies(tmp_path: Path) -> None:
    verify_manifest(_checkpoint(tmp_path / "step_1"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: (f / "model.safetensors").write_bytes(b"ST"), "differs from its checksum"),
        (lambda f: (f / "deepspeed" / "evil.pt").write_bytes(b"x"), "not in its manifest"),
        (lambda f: (f / "trainer_state.json").unlink(), "is missing"),
        (lambda f: (f / "manifest.json").unlink(), "no manifest.json"),
        (lambda f: (f / "manifest.json").write_text("[]"), "not a valid manifest"),
    ],
)
def test_a_changed_checkpoint_is_refused(tmp_path: Path, change, message: str) -> None:
    folder = _checkpoint(tmp_path / "step_1")
    change(folder)
    with pytest.raises(CheckpointError, match=message):
        verify_manifest(folder)


def test_complete_checkpoints_are_sorted_by_step_and_skip_partial_ones(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for name in ("step_10", "step_2", "step_3.partial", "step_x"):
        (root / name).mkdir(parents=True)
        (root / name / "trainer_state.json").write_text("{}")
    (root / "step_4").mkdir()  # no trainer state: not complete
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_2", "step_10"]
