"""Answer checking with math-verify: the last ``\\boxed{}`` of a response against the gold answer.

Two ways in:

- :func:`is_correct` checks in the calling process. math-verify bounds its own parse/verify time
  with ``signal.alarm``, which works only on a main thread; off the main thread it runs unbounded.
- :class:`Verifier` (the evaluation job) checks in a child process (``python -m
  eopd_ray.eval.verify_worker``) whose main thread runs math-verify with its timeouts, and kills and
  restarts that child when an answer takes longer than a hard bound: a pathological answer (a tower
  of powers, a huge factorial: big-integer arithmetic in C that no signal interrupts) costs at most
  ``hard_timeout_s`` and counts as wrong. It works from any thread, actor or task.

Anything that cannot be parsed counts as wrong, never as an error.
"""

from __future__ import annotations

import json
import math
import os
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def verify_answer(answer: str, gold: str, timeout_s: int | None) -> tuple[bool, str]:
    """(correct, status) of an extracted answer against ``gold`` with math-verify.

    Status: ``verified`` (compared; ``correct`` says how), ``unparsable`` (either side did not
    parse, or math-verify timed out parsing) or ``error`` (math-verify raised)."""
    from math_verify import parse, verify

    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=timeout_s)
        answer_parsed = parse(f"${answer}$", parsing_timeout=timeout_s)
        if not gold_parsed or not answer_parsed:
            return False, "unparsable"
        return bool(verify(gold_parsed, answer_parsed, timeout_seconds=timeout_s)), "verified"
    except Exception:  # math-verify raises on pathological input or timeouts: count as wrong
        return False, "error"


def is_correct(response: str, gold: str, timeout_s: int = 5) -> bool:
    """Whether the response's last boxed answer equals ``gold`` mathematically (in-process)."""
    answer = last_boxed(response)
    if answer is None:
        return False
    # On other threads math-verify's signal-based timeout cannot work: parse without it.
    on_main = threading.current_thread() is threading.main_thread()
    return verify_answer(answer, gold, timeout_s if on_main else None)[0]


@dataclass(frozen=True)
class Verdict:
    """One checked response: the extracted answer, whether it is right, and how it was decided.

    ``status``: ``verified``, ``no_answer`` (no ``\\boxed{}``), ``unparsable``, ``error`` or
    ``killed`` (over the hard time bound; the checking process was restarted)."""

    correct: bool
    answer: str | None
    status: str


class Verifier:
    """math-verify in a child process with a hard wall-clock bound per answer.

    ``timeout_s`` is math-verify's own (signal-based) timeout for each of its three calls (parse
    gold, parse answer, verify); the child is killed when one answer takes more than
    ``hard_timeout_s`` (default ``3 * timeout_s + 2``). Use as a context manager or call
    :meth:`close`. Not thread-safe: one caller at a time.
    """

    def __init__(
        self, timeout_s: float = 10.0, hard_timeout_s: float | None = None, startup_s: float = 180
    ) -> None:
        self.timeout_s = timeout_s
        self.hard_timeout_s = hard_timeout_s or 3 * timeout_s + 2
        self.startup_s = startup_s
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eopd_ray.eval.verify_worker", str(math.ceil(self.timeout_s))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # math-verify logs every timeout; nobody reads it
        )
        self._proc, self._buf = proc, b""
        if self._read_line(time.monotonic() + self.startup_s) != {"ready": True}:
            self._kill()
            raise RuntimeError("the math-verify worker did not start")
        return proc

    def _read_line(self, deadline: float) -> Any:
        """The next JSON line from the child, or None at EOF or past ``deadline``."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def check(self, response: str, gold: str) -> Verdict:
        """The verdict on one response (its last ``\\boxed{}``) against ``gold``."""
        answer = last_boxed(response)
        if answer is None or not answer.strip():
            return Verdict(False, answer, "no_answer")
        proc = self._proc or self._start()
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps({"answer": answer, "gold": gold}).encode() + b"\n")
            proc.stdin.flush()
        except BrokenPipeError:
            reply = None
        else:
            reply = self._read_line(time.monotonic() + self.hard_timeout_s)
        if reply is None:  # too slow, or the child died: restart it next time
            self._kill()
            self.restarts += 1
            return Verdict(False, answer, "killed")
        return Verdict(bool(reply["correct"]), answer, str(reply["status"]))

    def check_many(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
        """:meth:`check` of (response, gold) pairs, in order."""
        return [self.check(response, gold) for response, gold in pairs]

    def close(self) -> None:
        """Stop the child process."""
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
