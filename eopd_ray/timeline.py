"""``timeline.png``: the stage overlap of a run's last iterations, drawn from its ``trace.json``.

One row per lane (driver, learner, weights, each sampler actor, each teacher replica), a bar per
span, dashed lines where iterations start. At ``pipeline.max_staleness`` 0 the samplers idle
while the learner steps; at η ≥ 1 their bars run under the learner's: what the asynchronous
pipeline buys is visible at a glance. ``eopd-ray train`` draws it at the end of a run; for a run
that stopped early:

    python -m eopd_ray.timeline runs/tiny-eopd          # writes runs/tiny-eopd/timeline.png
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from eopd_ray.trace import read_trace

COLOURS = {"generate": "tab:blue", "update weights": "tab:cyan", "score batch": "tab:orange",
           "learner step": "tab:green", "publish weights": "tab:purple",
           "wait for batch": "tab:gray", "checkpoint": "tab:brown"}  # fmt: skip


def window(events: list[dict[str, Any]], iterations: int) -> tuple[float, float, list[float]]:
    """(start, end, iteration starts) in µs covering the last ``iterations`` iteration spans of
    the last run (a resumed run appends to the trace; the whole trace if it has none)."""
    run = max((e["ts"] for e in events if e["name"] == "run start"), default=0)
    its = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e["name"] == "iteration" and e["ts"] >= run
    )
    if its:
        last = its[-iterations:]
        return last[0][0], last[-1][1], [s for s, _ in last]
    spans = [e for e in events if e.get("ph") == "X"]
    if not spans:
        return 0.0, 0.0, []
    return min(e["ts"] for e in spans), max(e["ts"] + e["dur"] for e in spans), []


def lanes(events: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    """(pid, tid, name) of every lane with spans, in role order then by name."""
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e["name"] == "thread_name"}  # fmt: skip
    used = {(e["pid"], e["tid"]) for e in events if e.get("ph") == "X" and e["name"] != "iteration"}
    return sorted((pid, tid, names.get((pid, tid), str(tid))) for pid, tid in used)


def plot_timeline(trace: Path, out: Path, iterations: int = 4) -> Path | None:
    """Draw ``trace``'s last ``iterations`` iterations into ``out``; None without spans."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = read_trace(trace)
    start, end, starts = window(events, iterations)
    rows = lanes(events)
    if end <= start or not rows:
        return None
    index = {(pid, tid): i for i, (pid, tid, _) in enumerate(rows)}
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(rows) + 1.6))
    for e in events:
        if e.get("ph") != "X" or e["name"] == "iteration":
            continue
        if e["ts"] + e["dur"] < start or e["ts"] > end:
            continue
        row = index[(e["pid"], e["tid"])]
        bar = ((e["ts"] - start) / 1e6, e["dur"] / 1e6)
        ax.broken_barh([bar], (row - 0.4, 0.8), color=COLOURS.get(e["name"], "tab:olive"))
    for s in starts:
        ax.axvline((s - start) / 1e6, color="black", linestyle="--", linewidth=0.7)
    ax.set_yticks(range(len(rows)), [name for _, _, name in rows])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title(f"stage overlap, last {len(starts) or 'all'} iterations (dashed: iteration start)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    ax.legend(handles, list(COLOURS), loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def draw_timeline(run: Path) -> Path | None:
    """``run/timeline.png`` from ``run/trace.json``; a warning, not a failed run, if it cannot."""
    try:
        return plot_timeline(run / "trace.json", run / "timeline.png")
    except Exception as exc:  # a finished run's checkpoints matter more than its picture
        print(f"eopd-ray: warning: timeline.png not drawn: {exc}")
        return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m eopd_ray.timeline OUTPUT_DIR", file=sys.stderr)
        return 2
    run = Path(argv[0])
    if not (run / "trace.json").is_file():
        print(f"eopd-ray: error: no trace.json in {run}", file=sys.stderr)
        return 1
    drawn = plot_timeline(run / "trace.json", run / "timeline.png")
    print(drawn or "eopd-ray: no spans to draw")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
