"""The paper's off-policy KD baseline as a user runs it: ``eopd-ray generate configs/tiny-kd.yaml``
writes the teacher's responses, ``eopd-ray train configs/tiny-kd.yaml`` completes a file cut by a
kill and trains the student on it (no student sampler). What KD must learn: the student's
cross-entropy on the teacher's responses falls, in training and on held-out problems.

Slow: two CLI runs (2.6 min in all on 2 shared cores) after the tiny pair's pre-training (shared
with tests/test_learning.py, cached under runs/tiny-models)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eopd_ray.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
EOPD_RAY = str(Path(sys.executable).with_name("eopd-ray"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]  # may pre-train the pair (~15 min)


def _cli(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [EOPD_RAY, *args], cwd=cwd, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout


def _cut_by_a_kill(path: Path, rows_kept: int) -> None:
    """Keep the header and ``rows_kept`` rows, then half of the next row without its newline."""
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[: 1 + rows_kept]) + lines[1 + rows_kept][:40])


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def test_kd_preset_trains_the_student_on_the_teachers_responses(
    pretrained_models: tuple[Path, Path], tmp_path: Path
) -> None:
    work = tmp_path / "elsewhere"
    (work / "runs").mkdir(parents=True)
    (work / "runs" / "tiny-models").symlink_to(pretrained_models[0].parent)
    preset = str(REPO / "configs" / "tiny-kd.yaml")
    cache = work / "runs" / "tiny-kd" / "teacher_responses.jsonl"

    out = _cli(work, "generate", preset, "--no-progress")
    assert out.strip().endswith(f"wrote {cache}")
    rows = [json.loads(line) for line in cache.read_text().splitlines()[1:]]
    assert sorted(r["prompt_id"] for r in rows) == list(range(128))  # data.synthetic_problems
    assert all(len(r["responses"]) == 1 and r["responses"][0]["response_ids"] for r in rows)

    _cut_by_a_kill(cache, rows_kept=120)
    out = _cli(work, "train", preset, "--no-progress")
    assert "generating the teacher's responses to 8 prompts (120 already in" in out
    assert "done: 12 iterations, checkpoint runs/tiny-kd/checkpoints/step_12," in out
    assert len(cache.read_text().splitlines()) == 1 + 128

    metrics = read_metrics(work / "runs" / "tiny-kd" / "metrics.jsonl")
    assert len(metrics) == 12  # 3 epochs of 128 prompts, 32 per iteration
    assert all(r["time/sync_s"] == 0.0 for r in metrics)  # no student sampler: nothing pushed
    assert all(r["buffer/stale"] == 0 for r in metrics)
    # 0.5·CE on the teacher's tokens (~0.41 -> ~0.15 measured) and the top-16 FKL both fall
    assert _mean(metrics[-3:], "train/ce_loss") < 0.6 * _mean(metrics[:2], "train/ce_loss")
    assert _mean(metrics[-3:], "train/fkl_mean") < 0.5 * _mean(metrics[:2], "train/fkl_mean")

    # held out: problems never trained on, answered by the teacher (nats per token; measured
    # 0.64 before, 0.39 after, teacher 0.31)
    pairs = _teacher_answers(pretrained_models[0], _held_out_problems())
    before = _cross_entropy(pretrained_models[1], pairs)
    after = _cross_entropy(work / "runs" / "tiny-kd" / "checkpoints" / "step_12", pairs)
    assert after < 0.8 * before


def _held_out_problems() -> list:
    from eopd_ray.data.synthetic_math.problems import generate_problems
    from eopd_ray.models.pretrain import PretrainSettings, held_out_problems

    trained = {p.problem for p in generate_problems(128, seed=0, difficulty="small")}
    return [p for p in held_out_problems(PretrainSettings()) if p.problem not in trained][:64]


@torch.no_grad()
def _teacher_answers(teacher: Path, problems: list) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids up to its stop token) sampled from the teacher at temperature 1."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eopd_ray.models.pretrain import left_padded_prompts

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    torch.manual_seed(0)
    ids_BP, attention_BP = left_padded_prompts(tokenizer, problems)
    out_BL = model.generate(
        input_ids=ids_BP,
        attention_mask=attention_BP,
        max_new_tokens=96,
        do_sample=True,
        temperature=1.0,
        top_p=None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id,
    )
    stops = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    pairs = []
    for b in range(len(problems)):
        response: list[int] = []
        for token in out_BL[b, ids_BP.shape[1] :].tolist():
            response.append(token)
            if token in stops:
                break
        pairs.append((ids_BP[b][attention_BP[b].bool()].tolist(), response))
    return pairs


@torch.no_grad()
def _cross_entropy(model_dir: Path, pairs: list[tuple[list[int], list[int]]]) -> float:
    """Mean -log p(response token | prompt, earlier response tokens), nats per token."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    for prompt, response in pairs:
        ids_T = torch.tensor(prompt + response)
        logp_TV = torch.log_softmax(model(ids_T[None]).logits[0, :-1].float(), dim=-1)
        token_logp_T = logp_TV[torch.arange(len(ids_T) - 1), ids_T[1:]]
        total -= token_logp_T[len(prompt) - 1 :].sum().item()
        count += len(response)
    return total / count
