"""The run's trace file: Chrome-trace events, lanes for overlapping spans, append on resume."""

from __future__ import annotations

import json
from pathlib import Path

from eopd_ray.trace import Span, Tracer, read_trace, sampler_spans, teacher_spans


def _spans(path: Path) -> list[dict]:
    return [e for e in read_trace(path) if e["ph"] == "X"]


def test_spans_are_complete_events_in_microseconds(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    tracer = Tracer(path)
    tracer.add(Span("learner", "learner step", 10.0, 12.5, {"iteration": 3.0}))
    tracer.close()
    (event,) = _spans(path)
    assert (event["name"], event["cat"], event["ts"], event["dur"]) == (
        "learner step", "learner", 10_000_000, 2_500_000,
    )  # fmt: skip
    assert event["args"] == {"iteration": 3.0}
    names = [e["args"]["name"] for e in read_trace(path) if e["ph"] == "M"]
    assert names == ["learner", "learner"]  # process and thread names, once


def test_overlapping_spans_of_a_track_get_separate_lanes(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    tracer = Tracer(path)
    tracer.add_all([
        Span("sampler 0", "generate", 0.0, 4.0),
        Span("sampler 0", "generate", 1.0, 2.0),  # overlaps the first: lane 2
        Span("sampler 0", "generate", 4.0, 5.0),  # after the first ended: lane 1 again
    ])  # fmt: skip
    tracer.close()
    tids = [e["tid"] for e in _spans(path)]
    assert tids[0] == tids[2] != tids[1]
    threads = {e["args"]["name"] for e in read_trace(path) if e["name"] == "thread_name"}
    assert threads == {"sampler 0", "sampler 0 #2"}


def test_a_resumed_run_appends_and_reuses_lane_ids(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    for start in (0.0, 10.0):  # two runs of the same output_dir
        tracer = Tracer(path)
        tracer.add(Span("driver", "wait for batch", start, start + 1.0))
        tracer.add(Span("driver", "checkpoint", start + 1.0, start + 2.0))
        tracer.close()
    events = _spans(path)
    assert len(events) == 4
    assert len({e["tid"] for e in events}) == 1
    assert path.read_text().startswith("[\n")  # one header, then events one per line
    json.loads(path.read_text().rstrip().rstrip(",") + "]")  # the array, closed, is valid JSON


def test_a_span_reported_twice_is_written_once(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    tracer = Tracer(path)
    forward = ("r1", 5.0, 6.0, 8)
    tracer.add_all(teacher_spans([forward, forward, None]))  # every rollout of one batch
    tracer.add_all(teacher_spans([forward]))  # the same batch, also in the next iteration
    tracer.close()
    (event,) = _spans(path)
    assert event["name"] == "score batch" and event["args"] == {"requests": 8.0}


def test_sampler_records_become_spans_per_actor() -> None:
    records = [
        {"kind": "generate", "seconds": 2.0, "start": 100.0, "sequences": 4.0, "actor": 1.0},
        {"kind": "update", "seconds": 0.5, "start": 103.0, "version": 2.0, "actor": 0.0},
        {"seconds": 0.1, "actor": 0.0},  # a replayed kd submit: no wall-clock start
    ]
    spans = sampler_spans(records)
    assert [(s.track, s.name, s.start_s, s.end_s) for s in spans] == [
        ("sampler 1", "generate", 100.0, 102.0),
        ("sampler 0", "update weights", 103.0, 103.5),
    ]
    assert spans[0].args == {"sequences": 4.0}


def test_scope_times_the_block_even_when_it_raises(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    tracer = Tracer(path)
    try:
        with tracer.scope("learner step", "learner", iteration=1):
            raise RuntimeError("worker died")
    except RuntimeError:
        pass
    tracer.close()
    (event,) = _spans(path)
    assert event["name"] == "learner step" and event["args"] == {"iteration": 1}


def test_tracing_off_writes_nothing(tmp_path: Path) -> None:
    tracer = Tracer(None)
    with tracer.scope("learner step", "learner"):
        pass
    tracer.close()
    assert list(tmp_path.iterdir()) == []


def test_a_killed_runs_cut_last_line_is_dropped_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    tracer = Tracer(path)
    tracer.add(Span("driver", "checkpoint", 1.0, 2.0))
    tracer.close()
    with path.open("a") as f:
        f.write('{"name": "learner st')  # SIGKILL mid-write
    assert len(_spans(path)) == 1
    tracer = Tracer(path)  # the rerun appends after the last complete line
    tracer.add(Span("driver", "checkpoint", 3.0, 4.0))
    tracer.close()
    assert [e["ts"] for e in _spans(path)] == [1_000_000, 3_000_000]
    assert "learner st" not in path.read_text()
