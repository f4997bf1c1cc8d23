"""The math-verify child process of :class:`eopd_ray.eval.scoring.Verifier`.

Run as ``python -m eopd_ray.eval.verify_worker TIMEOUT_S``: reads one JSON object
``{"answer", "gold"}`` per stdin line and writes ``{"correct", "status"}`` per stdout line. It runs
math-verify on its main thread, so math-verify's ``signal.alarm`` timeouts work here; the parent
kills this process when an answer still takes too long.
"""

from __future__ import annotations

import json
import sys


def main(timeout_s: int) -> None:
    """Serve verification requests until stdin closes."""
    import math_verify  # noqa: F401  (import before "ready": the first answer is not slowed)

    from eopd_ray.eval.scoring import verify_answer

    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        correct, status = verify_answer(request["answer"], request["gold"], timeout_s)
        out.write(json.dumps({"correct": correct, "status": status}) + "\n")
        out.flush()


if __name__ == "__main__":
    main(int(sys.argv[1]))
