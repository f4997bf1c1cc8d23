"""Width pruning of the tiny preset's student: which neurons are kept, and what the pruned model
computes (the teacher minus the dropped neurons' contributions)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from eopd_ray.models.prune import mlp_neuron_importance, prune_mlp_width


def _model(seed: int = 0) -> Qwen3ForCausalLM:
    config = Qwen3Config(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[3, 7, 1, 9, 4, 0], [5, 2, 8, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    return ids, mask


def test_importance_ignores_padding_and_ranks_a_dead_neuron_last() -> None:
    model = _model()
    with torch.no_grad():  # neuron 5 of layer 1 never fires: silu(0) * 0 = 0
        model.model.layers[1].mlp.gate_proj.weight[5] = 0.0
        model.model.layers[1].mlp.up_proj.weight[5] = 0.0
    ids, mask = _batch()
    importance = mlp_neuron_importance(model, ids, mask)
    assert [tuple(s.shape) for s in importance] == [(8,), (8,)]
    assert importance[1][5] == 0.0 and bool((importance[1][torch.arange(8) != 5] > 0).all())
    # Right padding: the real tokens are the same with or without the padded tail; only they count.
    unpadded = [
        mlp_neuron_importance(model, ids[row : row + 1, :n], mask[row : row + 1, :n])
        for row, n in ((0, 5), (1, 3))
    ]
    for layer in range(2):
        expected = (5 * unpadded[0][layer] + 3 * unpadded[1][layer]) / 8  # mean over 8 tokens
        torch.testing.assert_close(importance[layer], expected, rtol=1e-5, atol=1e-6)
    kept = prune_mlp_width(model, importance, 7)
    assert 5 not in kept[1].tolist()


def test_pruned_model_is_the_original_without_the_dropped_neurons() -> None:
    original = _model(seed=1)
    ids, mask = _batch()
    importance = [torch.arange(8.0), torch.tensor([5.0, 1, 7, 0, 6, 2, 4, 3])]
    pruned = copy.deepcopy(original)
    kept = prune_mlp_width(pruned, importance, 3)
    assert [k.tolist() for k in kept] == [[5, 6, 7], [0, 2, 4]]  # top 3, in their original order
    assert pruned.config.intermediate_size == 3
    assert tuple(pruned.model.layers[0].mlp.down_proj.weight.shape) == (16, 3)
    # The same function as the original with the dropped neurons' output columns zeroed.
    with torch.no_grad():
        for layer, keep in zip(original.model.layers, kept, strict=True):
            dropped = torch.ones(8, dtype=torch.bool)
            dropped[keep] = False
            layer.mlp.down_proj.weight[:, dropped] = 0.0
        expected = original(input_ids=ids, attention_mask=mask).logits
        got = pruned(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_prune_rejects_bad_widths_and_layer_counts() -> None:
    model = _model()
    importance = [torch.ones(8), torch.ones(8)]
    for width in (0, 8, 9):
        with pytest.raises(ValueError, match="width must be in"):
            prune_mlp_width(model, importance, width)
    with pytest.raises(ValueError, match="importance has 1 layers"):
        prune_mlp_width(model, importance[:1], 4)
