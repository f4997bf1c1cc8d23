"""The timeline of a run: a span for every stage, as a Chrome-trace / Perfetto file.

``eopd-ray train`` writes ``output_dir/trace.json`` (open it in https://ui.perfetto.dev or
chrome://tracing) and, at the end, ``output_dir/timeline.png`` (:mod:`eopd_ray.timeline`):

- the driver's own stages, timed where they run: ``wait for batch`` (the pipeline assembling a
  fresh batch), ``learner step``, ``publish weights``, ``checkpoint``, one ``iteration`` span
  around each;
- each sampler actor's ``generate`` and weight ``update`` calls, from its per-call records;
- each teacher replica's batched forwards (``TeacherScores.forward_span``).

Remote spans carry wall-clock times (``time.time()``) taken in the actor's process; on one
machine they share the driver's clock, on a cluster they are as close as the nodes' NTP.
Overlapping spans of one track (two chunks on one sampler's engine, a replica's concurrent
batches) go on separate lanes, so each lane nests properly.

The file is the JSON Array Format, appended one event per line with the closing ``]`` left off
(which the format allows), so a crashed run's timeline is complete up to the crash and a resumed
run appends to the same file. Cost: one line per span (a few dozen per iteration), flushed per
iteration.
"""

from __future__ import annotations

import contextlib
import json
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# Chrome trace "processes": one per role, so Perfetto groups the lanes of a role together.
ROLE_PIDS = {"driver": 1, "learner": 2, "sampler": 3, "teacher": 4, "weights": 5}


@dataclass(frozen=True)
class Span:
    """One stage's interval on ``track`` (e.g. ``"sampler 0"``), wall-clock seconds."""

    track: str
    name: str
    start_s: float
    end_s: float
    args: dict[str, float] = field(default_factory=dict)

    @property
    def role(self) -> str:
        return self.track.split(" ", 1)[0]


class Tracer:
    """Appends spans to a trace file; ``Tracer(None)`` records nothing (tracing off).
    ``started_s``: when this run started (default: now), marked in the file."""

    def __init__(self, path: Path | None, started_s: float | None = None) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._lanes: dict[str, list[float]] = {}  # track -> end time of each lane's last span
        self._named: set[int] = set()
        self._seen: set[tuple[str, float]] = set()  # (track, start): spans reported twice
        if path is not None:
            fresh = not path.exists() or path.stat().st_size == 0
            if not fresh:
                _drop_cut_line(path)  # a killed run's last event may be half written
            self._file = path.open("a", encoding="utf-8")
            if fresh:
                self._file.write("[\n")
            # where this (possibly resumed) run starts: timeline.png draws the last run only
            now = time.time() if started_s is None else started_s
            start = {"name": "run start", "ph": "i", "s": "g", "ts": round(now * 1e6),
                     "pid": ROLE_PIDS["driver"], "tid": 0}  # fmt: skip
            self._file.write(json.dumps(start) + ",\n")

    @contextlib.contextmanager
    def scope(self, name: str, track: str = "driver", **args: float) -> Iterator[None]:
        """Time the enclosed block as a span (also when it raises)."""
        start = time.time()
        try:
            yield
        finally:
            self.add(Span(track, name, start, time.time(), dict(args)))

    def add(self, span: Span) -> None:
        if self._file is None or (span.track, span.start_s) in self._seen:
            return
        self._seen.add((span.track, span.start_s))
        tid = self._tid(span)
        event = {
            "name": span.name,
            "cat": span.role,
            "ph": "X",
            "ts": round(span.start_s * 1e6),
            "dur": max(0, round((span.end_s - span.start_s) * 1e6)),
            "pid": ROLE_PIDS.get(span.role, 9),
            "tid": tid,
            "args": span.args,
        }
        self._file.write(json.dumps(event) + ",\n")

    def add_all(self, spans: Iterable[Span]) -> None:
        for span in sorted(spans, key=lambda s: s.start_s):
            self.add(span)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _tid(self, span: Span) -> int:
        """The lane of ``span``'s track it fits on (the first whose last span has ended), named
        once per file; ids are a hash of the lane's name, stable across resumed runs."""
        lanes = self._lanes.setdefault(span.track, [])
        lane = next((i for i, end in enumerate(lanes) if end <= span.start_s), len(lanes))
        if lane == len(lanes):
            lanes.append(span.end_s)
        lanes[lane] = max(lanes[lane], span.end_s)
        name = span.track if lane == 0 else f"{span.track} #{lane + 1}"
        tid = zlib.crc32(name.encode()) & 0x7FFFFFFF
        if tid not in self._named and self._file is not None:
            self._named.add(tid)
            pid = ROLE_PIDS.get(span.role, 9)
            for kind, label in (("process_name", span.role), ("thread_name", name)):
                meta = {"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": {"name": label}}
                self._file.write(json.dumps(meta) + ",\n")
        return tid


def sampler_spans(records: Iterable[dict[str, Any]]) -> list[Span]:
    """Spans of the sampler pool's per-call records (``SamplerPool.pop_stats``): those with a
    wall-clock ``start`` (replayed kd responses have none)."""
    spans = []
    for r in records:
        if "start" not in r:
            continue
        kind = "generate" if r.get("kind") == "generate" else "update weights"
        args = {k: float(r[k]) for k in ("sequences", "tokens", "version") if k in r}
        track = f"sampler {int(r.get('actor', 0))}"
        spans.append(Span(track, kind, r["start"], r["start"] + r["seconds"], args))
    return spans


def teacher_spans(forwards: Iterable[tuple[str, float, float, int] | None]) -> list[Span]:
    """Spans of the teacher replicas' batched forwards, once per batch (every rollout of a batch
    carries the same ``(replica, start, end, batch size)``)."""
    unique = {f for f in forwards if f is not None}
    return [
        Span(f"teacher {replica}", "score batch", start, end, {"requests": float(size)})
        for replica, start, end, size in unique
    ]


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The events of a trace file written by :class:`Tracer` (a cut last line is left out), or
    of a complete JSON array."""
    text = path.read_text(encoding="utf-8")
    with contextlib.suppress(json.JSONDecodeError):
        return json.loads(text)
    events = []
    for line in text.splitlines():
        line = line.strip().rstrip(",")
        if line in ("", "[", "]"):
            continue
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))
    return events


def _drop_cut_line(path: Path) -> None:
    """Truncate ``path`` after its last complete line."""
    with path.open("rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
