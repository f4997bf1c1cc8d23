"""Streamed scoring: the teacher scores each request of a chunk as soon as it has finished.

A sampler's ``generate`` call returns only when its slowest request is done; with long-tailed
responses the teacher would sit idle behind it. So each call of the pool gets a stream id: the
sampler actor puts every finished request's rollouts into that call's :class:`Outboxes` entry,
and the chunk's scoring task (``eopd_ray/actors/teacher_service.py``) takes them every
``POLL_S`` (``take_finished``, in the actor's own ``stream`` concurrency group) and sends them to
the teacher at once, while the rest of the chunk is still being generated.

The chunk stays the unit of everything else: the scoring task still returns the whole chunk's
scored rollouts, in request order, built from the call's final result (a streamed rollout's
teacher scores are used only for the identical response), so admission versions, the due-chunk
rule, retries after a dead sampler or teacher replica and the exactly-once accounting of
``eopd_ray/pipeline.py`` are unchanged. ``pipeline.stream_scoring: false`` turns it off.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from eopd_ray.rollout import Rollout

POLL_S = 0.05  # how often a scoring task asks its sampler for finished requests
STREAM_GROUP = "stream"  # the sampler actor's concurrency group of take_finished

# (request index within the call, that request's rollouts: samples 0..n-1)
Finished = list[tuple[int, list[Rollout]]]


class Outboxes:
    """Finished requests of the running ``generate`` calls that have a stream id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._boxes: dict[str, Finished] = {}

    @contextlib.contextmanager
    def opened(self, stream_id: str | None) -> Iterator[None]:
        """Collect call ``stream_id``'s finished requests while the block runs (None: don't)."""
        if stream_id is None:
            yield
            return
        with self._lock:
            self._boxes[stream_id] = []
        try:
            yield
        finally:
            with self._lock:
                self._boxes.pop(stream_id, None)

    def put(self, stream_id: str, index: int, rollouts: list[Rollout]) -> None:
        with self._lock:
            box = self._boxes.get(stream_id)
            if box is not None:
                box.append((index, rollouts))

    def take(self, stream_id: str) -> Finished:
        """What finished since the last take (nothing once the call has returned)."""
        with self._lock:
            box = self._boxes.get(stream_id)
            if not box:
                return []
            self._boxes[stream_id] = []
            return box


@dataclass(frozen=True)
class RolloutStream:
    """Where the finished requests of one running ``generate`` call can be taken early."""

    actor: Any  # the SamplerActor's handle
    stream_id: str

    def take_ref(self) -> Any:
        """An ObjectRef of the ``Finished`` requests since the last take."""
        return self.actor.take_finished.options(concurrency_group=STREAM_GROUP).remote(
            self.stream_id
        )
