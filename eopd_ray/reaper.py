"""Stop a local Ray whose driver was killed: ``python -m eopd_ray.reaper DRIVER_PID SESSION_DIR``.

``ray.shutdown()`` stops the local Ray that ``eopd-ray train`` / ``eval`` start, but a driver
killed with SIGKILL (OOM killer, a scheduler's hard kill) runs no clean-up, and some of Ray's
agent processes (``ray::RuntimeEnvAgent``, ``ray::DashboardAgent``) outlive it. :func:`watch`
starts this module as a detached process next to a local Ray. While the driver lives it notes the
driver's descendants every second (once the driver is gone they are re-parented and can no longer
be found as its children); when the driver dies it stops those, and every process whose command
line names that Ray session's folder (SIGTERM, then SIGKILL after a grace period). Other Ray
instances on the machine are left alone: they are neither descendants nor in that folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_POLL_S = 1.0
_GRACE_S = 5.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split(") ", 1)[-1].startswith("Z"))


def session_processes(session_dir: str) -> list[int]:
    """PIDs (not this one) whose command line mentions ``session_dir``."""
    needle = session_dir.encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # exited meanwhile, or not ours to read
            continue
        if needle in cmdline:
            pids.append(int(entry.name))
    return pids


def descendants(pid: int) -> dict[int, float]:
    """{pid: start time} of every process below ``pid`` (empty once it is gone)."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return {}
    out = {}
    for child in children:
        if child.pid == os.getpid():  # the reaper is the driver's child too
            continue
        with contextlib.suppress(psutil.Error):
            out[child.pid] = child.create_time()
    return out


def _still_ours(known: dict[int, float]) -> list[int]:
    """The noted processes that still run (same PID and start time: not a reused PID)."""
    import psutil

    pids = []
    for pid, started in known.items():
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).create_time() == started:
                pids.append(pid)
    return pids


def stop(pids: list[int], grace_s: float = _GRACE_S) -> list[int]:
    """SIGTERM ``pids``, SIGKILL what is left after ``grace_s``; the PIDs still alive after."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            break
    return pids


def watch(session_dir: str, driver_pid: int | None = None) -> subprocess.Popen[bytes]:
    """Start the reaper for the local Ray in ``session_dir``, detached from this process group
    (so a Ctrl-C or kill of the driver's group does not stop it first)."""
    return subprocess.Popen(
        [sys.executable, "-m", "eopd_ray.reaper", str(driver_pid or os.getpid()), session_dir],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def main(argv: list[str]) -> int:
    driver_pid, session_dir = int(argv[0]), argv[1]
    known: dict[int, float] = {}
    while _alive(driver_pid):
        known |= descendants(driver_pid)
        time.sleep(_POLL_S)
    stop(sorted(set(_still_ours(known)) | set(session_processes(session_dir))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
