"""The reaper: a SIGKILLed driver's descendants (its local Ray) are stopped; others are not."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil

from eopd_ray.reaper import watch

# A stand-in driver: one child that re-titles itself like Ray's agents (no session path left in
# its command line), then waits.
DRIVER = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
    "print('ready', flush=True)\n"
    "time.sleep(300)\n"
)


def test_descendants_of_a_killed_driver_are_stopped_and_bystanders_are_not() -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout is not None and driver.stdout.readline().strip() == "ready"
        child = psutil.Process(driver.pid).children()[0]
        reaper = watch("/nonexistent/session_x", driver_pid=driver.pid)
        time.sleep(2.5)  # the reaper notes the driver's descendants while it lives
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert reaper.wait(timeout=30) == 0
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        assert bystander.poll() is None  # not a descendant: left alone
    finally:
        bystander.kill()
        driver.kill()
