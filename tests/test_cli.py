"""The command line: bad input is one line on stderr with exit status 2, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from eopd_ray.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eopd_ray.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_config_prints_resolved_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", str(CONFIGS / "tiny.yaml"), "loss.tau=1.25", "loss.variant=opd"]) == 0
    out = capsys.readouterr().out
    assert "tau: 1.25" in out
    assert "variant: opd" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["config", "missing.yaml"], "missing.yaml: config file not found"),
        (["config", str(CONFIGS / "tiny.yaml"), "loss.tau=-1"], "loss.tau: Input should be"),
        (["config", str(CONFIGS / "tiny.yaml"), "loss.nope=1"], "loss.nope: unknown key"),
        (["config", str(CONFIGS / "tiny.yaml"), "tau"], "expected key=value"),
        (
            ["toy", "--out", "unused", "--steps", "0"],
            "toy: steps: Input should be greater than or equal to 1 (got 0)",
        ),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], expected: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("eopd-ray: error: ")
    assert expected in lines[0]


def test_argparse_errors_are_short() -> None:
    result = run_cli("toy", "--seeds", "a,b", "--out", "x")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "expected comma-separated integers" in result.stderr
