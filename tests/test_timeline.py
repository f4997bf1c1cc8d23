"""timeline.png from a trace: the window of the last iterations, one row per lane."""

from __future__ import annotations

from pathlib import Path

from eopd_ray.timeline import lanes, main, plot_timeline, window
from eopd_ray.trace import Span, Tracer, read_trace


def _trace(path: Path) -> Path:
    tracer = Tracer(path, started_s=0.0)
    for it in range(3):
        t = 10.0 * it
        tracer.add_all([
            Span("driver", "wait for batch", t, t + 4.0),
            Span("sampler 0", "generate", t, t + 4.0),
            Span("teacher r1", "score batch", t + 2.0, t + 4.5),
            Span("learner", "learner step", t + 5.0, t + 9.0),
            Span("weights", "publish weights", t + 9.0, t + 9.5),
            Span("iteration", "iteration", t, t + 10.0),
        ])  # fmt: skip
    tracer.close()
    return path


def test_window_covers_the_last_iterations(tmp_path: Path) -> None:
    events = read_trace(_trace(tmp_path / "trace.json"))
    start, end, starts = window(events, iterations=2)
    assert round(end - start) == 20_000_000 and [round(s - start) for s in starts] == [
        0,
        10_000_000,
    ]
    names = [name for _, _, name in lanes(events)]
    assert names == ["driver", "learner", "sampler 0", "teacher r1", "weights"]  # no iteration row


def test_a_resumed_run_is_drawn_alone(tmp_path: Path) -> None:
    path = _trace(tmp_path / "trace.json")
    tracer = Tracer(path, started_s=100.0)  # the rerun: its "run start", then one iteration
    tracer.add(Span("iteration", "iteration", 101.0, 104.0))
    tracer.close()
    assert window(read_trace(path), iterations=4) == (101e6, 104e6, [101e6])


def test_plot_writes_a_png_and_the_module_redraws_a_run(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "trace.json")
    out = plot_timeline(trace, tmp_path / "timeline.png")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "timeline.png").unlink()
    assert main([str(tmp_path)]) == 0
    assert (tmp_path / "timeline.png").is_file()


def test_no_trace_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path)]) == 1
    assert "no trace.json" in capsys.readouterr().err
