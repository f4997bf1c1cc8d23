"""Stop a local Ray whose driver was killed: ``python -m eopd_ray.reaper DRIVER_PID SESSION_DIR``.

``ray.shutdown()`` stops the local Ray that ``eopd-ray train`` / ``eval`` start, but a driver
killed with SIGKILL (OOM killer, a scheduler's hard kill) runs no clean-up, and some of Ray's
agent processes outlive it. :func:`watch` starts this module as a detached process next to a
local Ray: it waits for the driver to die, then stops every process whose command line names
that Ray session's folder (SIGTERM, then SIGKILL after a grace period). Other Ray instances on the
machine are left alone: they run in other session folders.
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


def stop_session(session_dir: str, grace_s: float = _GRACE_S) -> int:
    """SIGTERM the session's processes, SIGKILL what is left after ``grace_s``; how many."""
    pids = session_processes(session_dir)
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
    return len(session_processes(session_dir))


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
    while _alive(driver_pid):
        time.sleep(_POLL_S)
    stop_session(session_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
