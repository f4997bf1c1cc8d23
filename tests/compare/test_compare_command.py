"""The ``compare`` sub-command's arguments and its checks before any run (no Ray)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from eopd_ray.compare.command import add_compare_parser
from eopd_ray.compare.plan import default_eval_config
from eopd_ray.config_io import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="eopd-ray")
    add_compare_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def test_overrides_may_follow_the_options() -> None:
    args = _parse(
        *("compare", "configs/tiny.yaml", "loss.tau=1.0", "--variants", "opd,eopd"),
        *("pipeline.iterations=2", "--eval-override", "sampling.samples=2", "optim.lr=1e-4"),
    )
    assert args.overrides == ["loss.tau=1.0", "pipeline.iterations=2", "optim.lr=1e-4"]
    assert args.eval_override == ["sampling.samples=2"]
    assert (args.variants, args.seeds, args.out, args.no_eval) == ("opd,eopd", "0,1,2", None, False)


def test_default_eval_config_is_the_presets_eval_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert default_eval_config("configs/tiny.yaml") == "configs/eval-tiny.yaml"
    assert default_eval_config("configs/paper.yaml") == "configs/eval-paper.yaml"
    assert default_eval_config("configs/eval-tiny.yaml") is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--variants", "opd,opd"], "opd is given twice"),
        (["--variants", "opd", "--seeds", "0,x"], "--seeds"),
        (["--variants", "opd", "seed=1"], "seed is set by eopd-ray compare"),
        (["--variants", "kd=configs/tiny.yaml"], "that preset's loss.variant is eopd, not kd"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    monkeypatch.chdir(REPO)
    args = _parse("compare", "configs/tiny.yaml", "--out", str(tmp_path / "cmp"), *argv)
    with pytest.raises(ConfigError, match=message):
        args.func(args)
    assert not (tmp_path / "cmp").exists()


def test_a_preset_without_eval_twin_needs_eval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    preset = tmp_path / "mine.yaml"
    preset.write_text((REPO / "configs" / "tiny.yaml").read_text())
    args = _parse("compare", str(preset), "--variants", "opd")
    with pytest.raises(ConfigError, match=r"no evaluation config for .*mine.yaml: pass --eval"):
        args.func(args)
