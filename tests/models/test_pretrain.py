"""Pre-training helpers: packing layout (hand-built), a short real fine-tune, the cache."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from eopd_ray.data.synthetic_math import generate_problems
from eopd_ray.models.pretrain import PretrainSettings, packed_batch, prepare_tiny_models, sft


def test_packed_batch_concatenates_and_masks_prompts() -> None:
    # popped from the end: (prompt [1, 2], response [3]) first, then ([4], [5, 6]), then ([7], [8]).
    examples = [([7], [8]), ([4], [5, 6]), ([1, 2], [3])]
    ids, labels = packed_batch(examples, rows=2, row_tokens=3)
    assert ids.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert labels.tolist() == [[-100, -100, 3], [-100, 5, 6]]
    assert examples == [([7], [8])]  # only what was needed was consumed


def test_packed_batch_cuts_the_last_example_at_the_row_end() -> None:
    examples = [([1], [2, 3, 4, 5])]
    ids, labels = packed_batch(examples, rows=1, row_tokens=3)
    assert ids.tolist() == [[1, 2, 3]]
    assert labels.tolist() == [[-100, 2, 3]]


def test_sft_lowers_the_loss(tiny_models: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    student = tmp_path / "student"
    shutil.copytree(tiny_models[1], student)
    before = {k: v.clone() for k, v in _weights(student).items()}
    report = sft(
        student, generate_problems(64, 0, difficulty="easy"), steps=12, rows=2,
        row_tokens=128, lr=3e-3, seed=0,
    )  # fmt: skip
    assert report["steps"] == 12
    assert report["loss_last"] < report["loss_first"] - 0.5
    after = _weights(student)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # saved in place


def test_prepare_tiny_models_reuses_a_matching_cache(tmp_path: Path) -> None:
    settings = PretrainSettings(
        num_problems=64, teacher_steps=2, student_steps=1, rows=1, row_tokens=64, eval_problems=4
    )
    teacher, student = prepare_tiny_models(tmp_path, settings)
    marker = json.loads((tmp_path / "pretrain.json").read_text())
    assert marker["settings"]["teacher_steps"] == 2
    assert 0.0 <= marker["report"]["teacher"]["accuracy_t1"] <= 1.0
    stamp = (teacher / "model.safetensors").stat().st_mtime_ns
    assert prepare_tiny_models(tmp_path, settings) == (teacher, student)
    assert (teacher / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")
