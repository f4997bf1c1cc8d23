"""Job submission pieces that need no cluster: address and token resolution, the runtime_env and
entrypoint, local validation, and the one-line errors of ``eopd-ray submit`` / ``jobs``."""

from __future__ import annotations

from pathlib import Path

import pytest

from eopd_ray import jobs
from eopd_ray.cli import main
from eopd_ray.config_io import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_ray_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    return tmp_path


def test_address_from_flag_or_env(no_ray_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(jobs.JobsError, match="no cluster address"):
        jobs.resolve_address(None)
    assert jobs.resolve_address("head:8265/") == "http://head:8265"
    monkeypatch.setenv("RAY_ADDRESS", "https://ray.example:443")
    assert jobs.resolve_address(None) == "https://ray.example:443"
    with pytest.raises(jobs.JobsError, match="http"):
        jobs.resolve_address("ray://head:10001")


def test_token_sources_in_order(no_ray_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert jobs.resolve_token(None) is None
    default = no_ray_env / ".ray" / "auth_token"
    default.parent.mkdir()
    default.write_text("from-home\n")
    assert jobs.resolve_token(None) == "from-home"
    path = no_ray_env / "tok"
    path.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert jobs.resolve_token(None) == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.resolve_token(None) == "from-env"
    assert jobs.resolve_token("from-flag") == "from-flag"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(no_ray_env / "missing"))
    with pytest.raises(jobs.JobsError, match="no such file"):
        jobs.resolve_token(None)


def test_runtime_env_uploads_the_checkout_without_heavy_folders() -> None:
    env = jobs.build_runtime_env(REPO, {"HF_HOME": "/shared/hf"}, ["vllm==0.32.0"])
    assert env["working_dir"] == str(REPO)
    assert {".venv", "runs", ".git"} <= set(env["excludes"])
    assert env["env_vars"]["HF_HOME"] == "/shared/hf"
    assert env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["pip"] == ["vllm==0.32.0"]
    assert "pip" not in jobs.build_runtime_env(REPO)
    assert (
        jobs.build_runtime_env(REPO, {"VLLM_CPU_KVCACHE_SPACE": "4"})["env_vars"][
            "VLLM_CPU_KVCACHE_SPACE"
        ]
        == "4"
    )


def test_entrypoint_quotes_overrides() -> None:
    line = jobs.build_entrypoint("train", "configs/tiny.yaml", ["name=a b", "loss.tau=1"])
    assert (
        line == "python -m eopd_ray.cli train configs/tiny.yaml 'name=a b' loss.tau=1 --no-progress"
    )
    assert "--no-progress" not in jobs.build_entrypoint("eval", "configs/e.yaml", [])
    assert jobs.parse_env(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}
    with pytest.raises(jobs.JobsError):
        jobs.parse_env(["A"])


def test_job_config_is_validated_locally() -> None:
    with pytest.raises(ConfigError, match=r"loss\.tua: unknown key"):
        jobs.validate_job_config("train", str(REPO / "configs/tiny.yaml"), ["loss.tua=1"])
    config = jobs.validate_job_config("train", str(REPO / "configs/tiny.yaml"), ["seed=3"])
    assert config.seed == 3


def test_cli_errors_are_one_line(no_ray_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "list"]) == 2
    assert capsys.readouterr().err.strip() == (
        "eopd-ray: error: no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS"
    )
    # Port 9 (discard) on loopback: nothing listens there.
    assert main(["jobs", "list", "--address", "http://127.0.0.1:9", "--token", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "eopd-ray: error: cannot reach a Ray cluster at http://127.0.0.1:9"
    assert main(["jobs", "logs", "--address", "http://127.0.0.1:9"]) == 2
    assert "JOB_ID" in capsys.readouterr().err
