"""Planning a comparison: run names, commands, checks before anything runs (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eopd_ray.compare.plan import parse_seeds, parse_variants, plan_compare
from eopd_ray.config import load_config
from eopd_ray.config_io import ConfigError
from eopd_ray.eval.config import EvalConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # presets name runs/tiny-models relative to the checkout


def test_every_variant_and_seed_is_one_train_command(tmp_path: Path) -> None:
    plan = plan_compare(
        "configs/tiny.yaml",
        parse_variants("opd,eopd"),
        (0, 1),
        tmp_path,
        ["pipeline.iterations=3"],
        "configs/eval-tiny.yaml",
        ["sampling.samples=2"],
    )
    assert [r.name for r in plan.runs] == ["opd-s0", "opd-s1", "eopd-s0", "eopd-s1"]
    run = plan.runs[1]
    assert run.output_dir == tmp_path / "runs" / "opd-s1"
    assert run.expected_iterations == 3
    assert run.job.argv() == [
        "train",
        "configs/tiny.yaml",
        "loss.variant=opd",
        "seed=1",
        f"output_dir={tmp_path / 'runs' / 'opd-s1'}",
        "pipeline.iterations=3",
        "--no-progress",
    ]
    assert run.job.log == tmp_path / "logs" / "opd-s1.log"
    # the command line is what the run's config is made of
    config = load_config(run.job.config, list(run.job.overrides))
    assert (config.loss.variant, config.seed) == ("opd", 1)

    job = plan.eval_job({"opd-s0": str(tmp_path / "ckpt")})
    evaluation = load_config(job.config, list(job.overrides), model=EvalConfig)
    checkpoints = [(c.name, c.path) for c in evaluation.checkpoints]
    assert checkpoints == [("opd-s0", str(tmp_path / "ckpt"))]
    assert evaluation.output_dir == str(tmp_path / "eval")
    assert evaluation.sampling.samples == 2


def test_a_variant_may_bring_its_own_preset(tmp_path: Path) -> None:
    preset = tmp_path / "tiny-opd.yaml"
    text = (REPO / "configs" / "tiny.yaml").read_text().replace("variant: eopd", "variant: opd")
    preset.write_text(text)
    plan = plan_compare(
        "configs/tiny.yaml", parse_variants(f"opd={preset},eopd"), (0,), tmp_path, [], None, []
    )
    assert [r.job.config for r in plan.runs] == [str(preset), "configs/tiny.yaml"]
    with pytest.raises(ConfigError, match=r"that preset's loss.variant is opd, not kd"):
        plan_compare("configs/tiny.yaml", {"kd": str(preset)}, (0,), tmp_path, [], None, [])


@pytest.mark.parametrize(
    ("overrides", "eval_overrides", "message"),
    [
        (["seed=4"], [], r"override 'seed=4': seed is set by eopd-ray compare"),
        (["loss.variant=opd"], [], r"loss.variant is set by eopd-ray compare"),
        ([], ["output_dir=x"], r"--eval-override 'output_dir=x'"),
        (["loss.tau=-1"], [], r"loss.tau"),  # bad values: before any run starts
        (["loss.entropy_bonus_beta=0.1"], [], r"variant opd does not use entropy_bonus_beta"),
        ([], ["sampling.samples=0"], r"sampling.samples"),
    ],
)
def test_bad_overrides_fail_before_any_run(
    tmp_path: Path, overrides: list[str], eval_overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_compare(
            "configs/tiny.yaml",
            {"opd": None},
            (0,),
            tmp_path,
            overrides,
            "configs/eval-tiny.yaml",
            eval_overrides,
        )
    assert not (tmp_path / "runs").exists()


def test_an_unknown_variant_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"loss.variant: Input should be 'opd', 'eopd'"):
        plan_compare("configs/tiny.yaml", {"eopdd": None}, (0,), tmp_path, [], None, [])


def test_parsing_variants_and_seeds() -> None:
    assert parse_variants("opd, kd=configs/tiny-kd.yaml") == {
        "opd": None,
        "kd": "configs/tiny-kd.yaml",
    }
    assert parse_seeds("0,1,2") == (0, 1, 2)
    for bad, message in (("opd,opd", "given twice"), ("kd=", "NAME=PRESET"), (",", "NAME")):
        with pytest.raises(ConfigError, match=message):
            parse_variants(bad)
    for bad in ("0,0", "a", "-1"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
