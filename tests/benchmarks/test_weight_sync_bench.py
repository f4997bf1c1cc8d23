"""The weight-sync benchmark's pure parts (the runs start Ray, vLLM and DeepSpeed: run
benchmarks/weight_sync.py by hand; figures in the README)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from weight_sync import copy_seconds, format_table, peak_rss_during  # noqa: E402


def test_peak_rss_sees_a_buffer_held_during_the_call_and_not_one_never_made() -> None:
    def hold() -> int:
        buffer = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        return int(buffer[-1].item())

    result, seconds, grown = peak_rss_during(hold)
    assert result == 1 and seconds > 0
    assert grown > 48 * 2**20
    _, _, idle = peak_rss_during(lambda: None)
    assert idle < 8 * 2**20


def test_copy_seconds_is_positive_and_the_table_has_the_ratios() -> None:
    assert copy_seconds([torch.ones(1000)], repeats=3) > 0
    rows = [
        {"mode": "collective", "push_s": 0.02, "peak_bytes": 0},
        {"mode": "object_store", "push_s": 0.05, "peak_bytes": 2 * 2**20},
    ]
    table = format_table(rows, nbytes=2**20, copy_s=0.01).splitlines()
    assert table[0] == "weights: 1.0 MiB; in-memory copy: 10.0 ms"
    assert table[3] == "| collective | 0.020 | 2.0× | 0.0 | 0.00 |"
    assert table[4] == "| object_store | 0.050 | 5.0× | 2.0 | 2.00 |"
