"""What a failed run tells its user: one line naming the role and the original exception.

A failure inside a role reaches the driver wrapped by Ray (``RayTaskError`` around the actor's or
task's exception, sometimes several deep: a scoring task calls the teacher deployment). The
wrapper's text starts with ``ray::_score_rollouts() (pid=..., ip=...)`` and a remote traceback;
the user needs "teacher scoring failed: ValueError: ...". :func:`describe_failure` unwraps the
chain to the innermost exception and names the role from the outermost Ray function or actor
class that is one of ours. ``eopd-ray --debug`` prints the full traceback instead.
"""

from __future__ import annotations

# Ray function / actor-class names (``RayTaskError.function_name`` contains them) -> the role.
ROLES: dict[str, str] = {
    "_score_rollouts": "teacher scoring",
    "TeacherDeployment": "teacher",
    "RewardWorker": "reward",
    "SamplerActor": "sampler",
    "LearnerWorker": "learner",
    "EvalActor": "evaluator",
}


def _role_of(function_name: str) -> str | None:
    return next((role for key, role in ROLES.items() if key in function_name), None)


def root_cause(exc: BaseException) -> tuple[BaseException, str | None]:
    """(innermost exception, outermost role) of a chain of Ray wrappers and ``raise ... from``."""
    role: str | None = None
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        if role is None and _is_ray_wrapper(exc):
            # the dual-class instances Ray raises keep the task's name only in their text
            name = getattr(exc, "function_name", None) or str(exc).split("\n", 1)[0]
            role = _role_of(str(name))
        inner = getattr(exc, "cause", None)  # RayTaskError keeps the remote exception here
        if isinstance(inner, BaseException):
            exc = inner
            continue
        if exc.__cause__ is not None and _is_ray_wrapper(exc):
            exc = exc.__cause__
            continue
        break
    return exc, role


def _is_ray_wrapper(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("ray.")


def first_line(exc: BaseException) -> str:
    """The exception's own message, first line, with its type unless it is a plain ValueError."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    kind = type(exc).__name__
    if not text:
        return kind
    return text if kind in ("ValueError", "FileNotFoundError") else f"{kind}: {text}"


def describe_failure(exc: BaseException) -> str:
    """``"<role> failed: <Type>: <message>"`` (or the message alone outside a role)."""
    cause, role = root_cause(exc)
    text = first_line(cause)
    return f"{role} failed: {text}" if role else text
