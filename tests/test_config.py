"""Typed config: presets load, overrides apply, and bad input is one clear line naming the key."""

from pathlib import Path

import pytest

from eopd_ray.config import RunConfig, load_config
from eopd_ray.config_io import ConfigError, dump_config, parse_overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MINIMAL = "student: {path: s}\nteacher: {path: t}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("preset", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_loads(preset: Path, tmp_path: Path) -> None:
    from eopd_ray.eval.config import EvalConfig

    # eval-*.yaml configure `eopd-ray eval`; every other preset is a training run.
    model = EvalConfig if preset.name.startswith("eval-") else RunConfig
    config = load_config(preset, model=model)
    assert isinstance(config, model)
    # the resolved dump is itself a valid config that loads back to the same values
    assert load_config(write(tmp_path, dump_config(config)), model=model) == config


def test_paper_preset_is_table_8() -> None:
    config = load_config(CONFIGS / "paper.yaml")
    assert config.teacher.path == "Qwen/Qwen3-8B"
    assert config.student.path == "Qwen/Qwen3-1.7B-Base"
    assert config.optim.lr == pytest.approx(3e-6)
    assert config.optim.schedule == "cosine"
    assert (config.rollout.batch_prompts, config.rollout.mini_batch_prompts) == (128, 32)
    assert config.rollout.samples_per_prompt == 1
    assert (config.rollout.temperature, config.rollout.top_p) == (1.0, 1.0)
    assert config.rollout.max_response_tokens == 4096
    assert (config.loss.variant, config.loss.tau, config.loss.top_k) == ("eopd", 0.8, 16)
    assert config.data.epochs == 3


def test_overrides_are_typed_and_nested(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, MINIMAL),
        ["loss.tau=1.5", "optim.lr=3e-6", "loss.variant=opd", "output_dir=/tmp/x", "seed=7"],
    )
    assert config.loss.tau == 1.5
    assert config.optim.lr == pytest.approx(3e-6)  # YAML reads 3e-6 as a string; still a float
    assert config.loss.variant == "opd"
    assert config.output_dir == "/tmp/x"
    assert config.seed == 7
    # untouched siblings keep their defaults
    assert config.loss.top_k == 16


def test_parse_overrides_tree() -> None:
    assert parse_overrides(["a.b=1", "a.c=x", "d=true"]) == {"a": {"b": 1, "c": "x"}, "d": True}


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        (MINIMAL + "loss: {tau: -1}\n", [], "loss.tau: Input should be greater than or equal to 0"),
        (MINIMAL, ["loss.top_k=0"], "loss.top_k: Input should be greater than or equal to 1"),
        (MINIMAL, ["loss.clip_eps=0"], "loss.clip_eps: Input should be greater than 0"),
        (MINIMAL, ["loss.tua=1"], "loss.tua: unknown key"),
        (MINIMAL + "lr: 1\n", [], "lr: unknown key"),
        (MINIMAL, ["loss.variant=ppo"], "loss.variant: Input should be 'opd', 'eopd'"),
        (MINIMAL, ["rollout.batch_prompts=abc"], "rollout.batch_prompts: Input should be a valid"),
        ("student: {path: s}\n", [], "loss.variant eopd needs a teacher: set teacher.path"),
        (MINIMAL, ["rollout.batch_prompts=10", "rollout.mini_batch_prompts=4"], "must divide"),
    ],
)
def test_bad_values_name_the_key_and_file(
    tmp_path: Path, text: str, overrides: list[str], expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert str(path) in message
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("bad", ["tau", "=1", "loss..tau=1", ".tau=1"])
def test_bad_override_syntax(bad: str) -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides([bad])


def test_override_value_that_is_both_section_and_value() -> None:
    with pytest.raises(ConfigError, match="both as a value and a section"):
        parse_overrides(["loss=1", "loss.tau=2"])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1, 2"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["loss.variant=grpo", "rollout.samples_per_prompt=1"],
            "grpo needs rollout.samples_per_prompt >= 2",
        ),
        (["pipeline.behaviour_weight_cap=2"], "behaviour_weight_cap needs pipeline.importance"),
        (["loss.kd_ce_weight=0.3"], "variant eopd does not use kd_ce_weight (kd)"),
        (["loss.variant=opd", "loss.shaping_alpha=1"], "does not use shaping_alpha"),
        (["optim.lr=.inf"], "optim.lr: Input should be a finite number"),
        (["loss.tau=.nan"], "loss.tau: Input should be a finite number"),
        (["optim.betas=[0.9, 2.0]"], "betas must each be in [0, 1)"),
        (["rollout.max_response_tokens=200"], "exceeds sampler.max_model_len (256)"),
        (["pipeline.overlap_publication=true"], "overlap_publication needs pipeline.max_staleness"),
        (
            [
                "pipeline.max_staleness=1",
                "pipeline.overlap_publication=true",
                "sampler.weight_sync=disk",
            ],
            "and sampler.weight_sync: collective, got max_staleness 1, disk",
        ),
    ],
)
def test_settings_that_make_others_wrong_are_refused_at_load(
    overrides: list[str], message: str
) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    ):
        load_config(CONFIGS / "tiny.yaml", overrides)  # fmt: skip


def test_settings_of_the_variant_in_use_and_defaults_of_others_load() -> None:
    config = load_config(CONFIGS / "tiny.yaml", ["loss.variant=kd", "loss.kd_ce_weight=0.3"])
    assert config.loss.kd_ce_weight == 0.3
    grpo = ["loss.variant=grpo", "rollout.samples_per_prompt=4", "loss.kd_ce_weight=0.5"]
    assert load_config(CONFIGS / "tiny.yaml", grpo).rollout.samples_per_prompt == 4


def test_relative_paths_resolve_against_the_base_dir_and_hub_ids_stay(tmp_path: Path) -> None:
    (tmp_path / "models" / "s").mkdir(parents=True)
    text = "output_dir: out\nstudent: {path: models/s}\nteacher: {path: Qwen/Qwen3-8B}\n"
    config = load_config(write(tmp_path, text), base_dir=tmp_path / "models" / "..")
    assert config.output_dir == str(tmp_path / "out")
    assert config.student.path == str(tmp_path / "models" / "s")
    assert config.teacher.path == "Qwen/Qwen3-8B"  # owner/name, not here: a hub id
    typo = load_config(write(tmp_path, "student: {path: studnet}\nteacher: {path: t}\n"),
                       base_dir=tmp_path)  # fmt: skip
    assert typo.student.path == str(tmp_path / "studnet")  # a local path, never the hub
    assert load_config(write(tmp_path, text)).output_dir == "out"  # no base dir: as written


def test_publication_overlaps_by_default_where_the_staleness_bound_allows_it() -> None:
    path = CONFIGS / "tiny.yaml"
    assert not load_config(path).overlaps_publication  # eta = 0: exactly on-policy
    assert load_config(path, ["pipeline.max_staleness=1"]).overlaps_publication
    off = ["pipeline.max_staleness=1", "pipeline.overlap_publication=false"]
    assert not load_config(path, off).overlaps_publication
    disk = ["pipeline.max_staleness=2", "sampler.weight_sync=disk"]
    assert not load_config(path, disk).overlaps_publication
