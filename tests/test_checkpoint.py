"""Checkpoint manifests (resume loads only the files this run wrote: DeepSpeed unpickles them) and
rotation (``pipeline.keep_checkpoints``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from eopd_ray.checkpoint import (
    CheckpointError,
    complete_checkpoints,
    newest_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    verify_manifest,
    write_manifest,
)
from eopd_ray.config import PipelineConfig


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


def _folders(root: Path, names: list[str], complete: bool) -> None:
    for name in names:
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / "trainer_state.json").write_text("{}")


def _left(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "checkpoints").iterdir())


def test_prune_keeps_the_newest_and_removes_older_incomplete_folders(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    _folders(root, ["step_1", "step_2", "step_3", "step_4", "step_5"], complete=True)
    # a crashed save before step_4, a kill mid-delete, a crashed save after step_5, no step
    _folders(root, ["step_3.partial", "step_2.deleting", "step_6.partial", "notes"], False)
    (root / "step_2.deleting" / "trainer_state.json").write_text("{}")
    removed = prune_checkpoints(tmp_path, 2, root / "step_5")
    assert sorted(p.name for p in removed) == [
        "step_1",
        "step_2",
        "step_2.deleting",
        "step_3",
        "step_3.partial",
    ]
    assert _left(tmp_path) == ["notes", "step_4", "step_5", "step_6.partial"]


def test_prune_keeps_every_complete_one_for_none_and_always_the_written_one(
    tmp_path: Path,
) -> None:
    root = tmp_path / "checkpoints"
    _folders(root, ["step_2", "step_4", "step_9"], complete=True)
    _folders(root, ["step_3.partial"], complete=False)
    prune_checkpoints(tmp_path, None, root / "step_9")
    assert _left(tmp_path) == ["step_2", "step_4", "step_9"]
    prune_checkpoints(tmp_path, 1, root / "step_4")  # written, though not the newest
    assert _left(tmp_path) == ["step_4", "step_9"]
    prune_checkpoints(tmp_path, 1, root / "step_9")
    assert _left(tmp_path) == ["step_9"]


class _Learner:
    """The learner part of save_checkpoint's roles: writes a small HF-like folder."""

    version = 0

    def save_checkpoint(self, folder: Path) -> Path:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"w" * self.version)
        return folder


def test_save_checkpoint_rotates_with_pipeline_keep_checkpoints(tmp_path: Path) -> None:
    learner = _Learner()
    pipeline = SimpleNamespace(
        config=PipelineConfig(keep_checkpoints=2),
        pending_prompt_ids=lambda: [7],
        state=lambda: {"sampler_restarts": 0},
    )
    roles = SimpleNamespace(learner=learner, stream=SimpleNamespace(position=3), pipeline=pipeline)
    for it in (1, 2, 3, 4):
        learner.version = it
        save_checkpoint(roles, tmp_path, it)  # type: ignore[arg-type]
    assert _left(tmp_path) == ["step_3", "step_4"]
    for folder in complete_checkpoints(tmp_path):
        verify_manifest(folder)
    assert newest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_4"
    assert save_checkpoint(roles, tmp_path, 4) == tmp_path / "checkpoints" / "step_4"  # final
    assert _left(tmp_path) == ["step_3", "step_4"]
