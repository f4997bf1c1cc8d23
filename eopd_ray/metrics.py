"""Run metrics: one JSON line per iteration, TensorBoard scalars, and a live progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# The numbers shown live on the progress bar (short name -> metric key).
_BAR = {
    "loss": "train/loss",
    "rkl": "train/reverse_kl",
    "fkl": "train/fkl_mean",
    "H>τ": "train/high_entropy_frac",
    "acc": "rollout/accuracy",
    "tok/s": "time/trained_tokens_per_s",
}


class MetricsLogger:
    """Appends to ``metrics.jsonl`` and TensorBoard under the run's output folder.

    A resumed run starts at ``start`` (the checkpoint's iteration): rows of iterations ``>= start``
    that a run killed after its last checkpoint had written are dropped first, from the JSONL and
    (``purge_step``) from TensorBoard, so every iteration appears once."""

    def __init__(self, output_dir: Path, total_iterations: int, start: int = 0, bar: bool = True):
        self.path = output_dir / "metrics.jsonl"
        self._tb_dir = output_dir / "tensorboard"
        self._file: Any = None
        self._tb: Any = None
        self._open(start)
        self._bar: Any = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_iterations, initial=start, unit="it", dynamic_ncols=True)

    def _open(self, start: int) -> None:
        truncate_metrics(self.path, start)
        self._file = self.path.open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            purge = start if start else None
            self._tb = SummaryWriter(log_dir=str(self._tb_dir), purge_step=purge)
        except ImportError:  # tensorboard is a declared dependency; keep JSONL if it is absent
            self._tb = None

    def rewind(self, start: int) -> None:
        """Continue from iteration ``start`` (the run went back to a checkpoint in this process)."""
        self._close_files()
        self._open(start)
        if self._bar is not None:
            self._bar.n = start
            self._bar.refresh()

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        row = {"iteration": iteration, **{k: _clean(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "iteration" and value is not None:
                    self._tb.add_scalar(key, value, iteration)
        if self._bar is not None:
            self._bar.set_postfix(
                {short: f"{metrics[key]:.3g}" for short, key in _BAR.items() if key in metrics},
                refresh=False,
            )
            self._bar.update(1)

    def _close_files(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def close(self) -> None:
        self._close_files()
        if self._bar is not None:
            self._bar.close()


def _clean(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def truncate_metrics(path: Path, start: int) -> None:
    """Keep only the rows of iterations ``< start`` (written atomically: aside, then renamed)."""
    if not path.is_file():
        return
    rows = read_metrics(path)
    kept = [row for row in rows if row.get("iteration", -1) < start]
    if len(kept) == len(rows):
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
    tmp.replace(path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
