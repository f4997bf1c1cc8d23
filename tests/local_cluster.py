"""A real local Ray cluster for tests: ``ray start --head`` on loopback with token authentication.

Used by the submission and autoscaling tests (``tests/test_submit.py``, ...). The cluster runs on
non-default ports (GCS 6390, dashboard 8275) with its own temp dir and a fresh random token, so it
neither collides with nor trusts another Ray on the machine. ``ray stop`` would stop *every* Ray
on the machine, so teardown kills exactly the processes this cluster started: each carries a
marker variable in its environment (inherited by every Ray process and worker).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
MARKER = "EOPD_TEST_CLUSTER"


@dataclass
class LocalCluster:
    address: str  # the dashboard URL (Jobs API)
    gcs_address: str  # for ray.init(address=...)
    token: str
    temp_dir: Path
    marker: str

    def client_env(self, **extra: str) -> dict[str, str]:
        """Environment for a client process that talks to this cluster (token included)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_AUTH_TOKEN=self.token, **extra)
        return env


def start(num_cpus: int = 8, port: int = 6390, dashboard_port: int = 8275) -> LocalCluster:
    marker = secrets.token_hex(8)
    token = secrets.token_hex(16)
    temp_dir = Path(f"/tmp/eopd-{marker}")  # short: Ray's socket paths must fit in 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # The venv first on PATH, as on a cluster node whose image has the package installed.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        {MARKER: marker, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
    )
    cmd = [
        RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
        "--include-dashboard=true",
        # Free ports for the per-node agents: the defaults (52365, 10001, ...) are taken by any
        # other Ray on the machine, and a job agent that cannot bind leaves the Jobs API with
        # "No available agent to submit job".
        *(f"--{name}={_free_port()}" for name in _AGENT_PORTS),
    ]  # fmt: skip
    cluster = LocalCluster(
        f"http://127.0.0.1:{dashboard_port}", f"127.0.0.1:{port}", token, temp_dir, marker
    )
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        stop(cluster)
        raise RuntimeError(f"ray start failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the dashboard (Jobs API) comes up after ray start
        try:
            urllib.request.urlopen(f"{cluster.address}/api/version", timeout=2)
            break
        except Exception:
            time.sleep(1)
    return cluster


_AGENT_PORTS = (
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "ray-client-server-port",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _marked_pids(marker: str) -> list[int]:
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            pids.append(int(entry))
    return pids


def stop(cluster: LocalCluster, grace_s: float = 10.0) -> None:
    """SIGTERM then SIGKILL every process of this cluster (and only those), remove its temp dir."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        pids = _marked_pids(cluster.marker)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = _marked_pids(cluster.marker)
        if not pids:
            break
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
