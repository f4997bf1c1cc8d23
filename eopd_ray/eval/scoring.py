"""Answer checking with math-verify: the last ``\\boxed{}`` of a response against the gold answer.

math-verify bounds its own parse/verify time with ``signal.alarm``, which works only on a main
thread; call these functions from a sync actor, a task or the driver's main thread. Anything that
cannot be parsed counts as wrong, never as an error.
"""

from __future__ import annotations

import threading


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


def is_correct(response: str, gold: str, timeout_s: int = 5) -> bool:
    """Whether the response's last boxed answer equals ``gold`` mathematically."""
    from math_verify import parse, verify

    answer = last_boxed(response)
    if answer is None:
        return False
    # On other threads math-verify's signal-based timeout cannot work: parse without it.
    on_main = threading.current_thread() is threading.main_thread()
    timeout = timeout_s if on_main else None
    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
        answer_parsed = parse(f"${answer}$", parsing_timeout=timeout)
        if not gold_parsed or not answer_parsed:
            return False
        return bool(verify(gold_parsed, answer_parsed, timeout_seconds=timeout))
    except Exception:  # math-verify raises on pathological input or timeouts: count as wrong
        return False
