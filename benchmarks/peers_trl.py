"""The TRL side of ``benchmarks/peers.py``: on-policy distillation with TRL's DistillationTrainer.

    .venv/bin/python benchmarks/peers_trl.py SETTINGS.json

Run by ``peers.py`` as a process of its own (so that its memory is measured alone), never imported
by ``eopd_ray`` or the tests. ``SETTINGS.json`` (written by ``peers.py``) holds ``student`` and
``teacher`` (Hugging Face folders), ``prompts`` (JSONL of conversational ``prompt`` rows, in
training order), ``threads`` (torch intra-op threads), ``final_dir`` (where the trained student is
saved as a Hugging Face folder), ``steps_file`` and ``config`` (``DistillationConfig`` keyword
arguments, :func:`peers_measure.trl_settings`).

Writes one JSON line per optimizer step to ``steps_file``: ``step``, ``time`` (wall clock, epoch
seconds, at the step's end), ``tokens`` (completion tokens trained in the step, EOS included, as
TRL's completion mask counts them), ``generate_s`` (seconds in the step's on-policy generation).
TRL's own log (loss, lengths, entropy) goes to stdout as usual. TRL's behaviour is unchanged:
the subclass only counts and times.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import DistillationConfig, DistillationTrainer


class CountingTrainer(DistillationTrainer):
    """DistillationTrainer that records the tokens and time of each generation batch."""

    generated_tokens = 0
    generate_s = 0.0

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = super()._generate_and_score_completions(inputs)
        self.generate_s += time.perf_counter() - t0
        self.generated_tokens += int(out["completion_mask"].sum())
        return out


class StepLog(TrainerCallback):
    """Appends one JSON line per optimizer step (see the module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.trainer: CountingTrainer | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self.trainer
        assert trainer is not None
        row = {
            "step": state.global_step,
            "time": time.time(),
            "tokens": trainer.generated_tokens,
            "generate_s": trainer.generate_s,
        }
        trainer.generated_tokens, trainer.generate_s = 0, 0.0
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def main(settings_path: str) -> None:
    settings = json.loads(Path(settings_path).read_text())
    torch.set_num_threads(settings["threads"])
    rows = [json.loads(line) for line in Path(settings["prompts"]).read_text().splitlines()]
    steps_file = Path(settings["steps_file"])
    steps_file.unlink(missing_ok=True)
    log = StepLog(steps_file)
    trainer = CountingTrainer(
        model=settings["student"],
        teacher_model=settings["teacher"],
        args=DistillationConfig(**settings["config"]),
        train_dataset=Dataset.from_list(rows),
        callbacks=[log],
    )
    log.trainer = trainer
    trainer.train()
    trainer.save_model(settings["final_dir"])  # model, tokenizer, generation config
    print(f"peers_trl: saved {settings['final_dir']}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: peers_trl.py SETTINGS.json")
    main(sys.argv[1])
