"""Pre-training helpers: batch layout (hand-built), held-out split, a short fine-tune, the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eopd_ray.data.synthetic_math.problems import DIFFICULTIES, NumberRanges, generate_problems
from eopd_ray.models.pretrain import (
    PretrainSettings,
    held_out_problems,
    padded_batch,
    prepare_tiny_models,
    sft,
    training_problems,
)


def test_padded_batch_one_example_per_row_masks_prompt_and_padding() -> None:
    examples = [([1, 2], [3]), ([4], [5, 6, 7])]
    ids, attention, labels = padded_batch(examples, pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 0], [4, 5, 6, 7]]
    assert attention.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert labels.tolist() == [[-100, -100, 3, -100], [-100, 5, 6, 7]]


def test_held_out_problems_are_disjoint_from_the_training_problems() -> None:
    settings = PretrainSettings(num_problems=200, eval_problems=50)
    train = {p.problem for p in training_problems(settings)}
    held_out = held_out_problems(settings)
    assert len(held_out) == 50
    assert len({p.problem for p in held_out}) == 50
    assert not train & {p.problem for p in held_out}


def test_held_out_problems_refuses_an_exhausted_problem_space(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Operands fixed at their minimum: a few hundred distinct problems (the word family's names
    # and items), all of them among 2000 training problems.
    minimal = NumberRanges(1, (1, 1), 2, 1, 2, (1, 1), 1, 2, 2, 2, 1)
    monkeypatch.setitem(DIFFICULTIES, "minimal", minimal)
    with pytest.raises(ValueError, match="not training problems"):
        held_out_problems(PretrainSettings(num_problems=2000, difficulty="minimal"))


def test_sft_lowers_the_loss(tiny_models: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    student = tmp_path / "student"
    shutil.copytree(tiny_models[1], student)
    before = {k: v.clone() for k, v in _weights(student).items()}
    report = sft(
        student, generate_problems(64, 0, difficulty="small"), steps=12, batch_examples=8,
        lr=3e-3, seed=0,
    )  # fmt: skip
    assert report["steps"] == 12
    assert report["loss_last"] < report["loss_first"] - 0.5
    after = _weights(student)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # saved in place


def test_prepare_tiny_models_reuses_a_matching_cache(tmp_path: Path) -> None:
    settings = PretrainSettings(
        num_problems=64, teacher_steps=2, batch_examples=2, student_mlp_width=64,
        calibration_examples=8, eval_problems=4,
    )  # fmt: skip
    teacher, student = prepare_tiny_models(tmp_path, settings)
    marker = json.loads((tmp_path / "pretrain.json").read_text())
    assert marker["settings"]["teacher_steps"] == 2
    assert 0.0 <= marker["report"]["teacher"]["accuracy_t1"] <= 1.0
    # The student is the teacher with narrower MLPs: same depth, attention and vocabulary.
    teacher_config = json.loads((teacher / "config.json").read_text())
    student_config = json.loads((student / "config.json").read_text())
    assert student_config["intermediate_size"] == 64 < teacher_config["intermediate_size"]
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        assert student_config[key] == teacher_config[key]
    assert (student / "tokenizer.json").read_text() == (teacher / "tokenizer.json").read_text()
    assert (
        marker["report"]["student"]["student_parameters"]
        < marker["report"]["student"]["teacher_parameters"]
    )
    stamp = (teacher / "model.safetensors").stat().st_mtime_ns
    assert prepare_tiny_models(tmp_path, settings) == (teacher, student)
    assert (teacher / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")
