"""``TeacherResponses``: the sampler role of ``loss.variant: kd``, serving the teacher's cached
responses (``eopd-ray generate``, ``eopd_ray/generate.py``) as rollouts; no student engine runs.

It offers what ``RolloutPipeline`` needs of a sampler pool (``RolloutSamplers`` in ``roles.py``)
and what the train loop uses of one (``pop_stats``, ``shutdown``, ``version``), so the pipeline is
unchanged: each chunk of requests becomes one ``ray.put`` of ``list[Rollout]``, which the teacher
deployment scores (top-k for the forward KL) exactly as it scores student rollouts.

- ``needs_weights = False``: the responses do not depend on the student, so the train loop sends
  it no weights and does not even gather them from the learner (``train.publish_weights``);
  ``push_weights`` accepts and ignores them for callers that do (``checkpoint.restore_data``).
- Versions: every token is stamped with the learner's current version (``version`` reads it from
  the learner). The staleness bound limits how far the policy that *sampled* a rollout lags the
  one trained on it; teacher responses are off-policy by design and come from no student version,
  so they are never stale, and stamping them "now" makes the buffer's check pass by construction.
- ``behaviour_logprobs``: the teacher's own vLLM log-probs of its tokens. ``kd`` has no importance
  ratio and ignores them; they are carried so that a rollout is complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from eopd_ray.generate import CachedPrompt, read_responses
from eopd_ray.rollout import Request, Rollout


class TeacherResponses:
    """Cached teacher responses behind the sampler pool's interface (see the module docstring)."""

    needs_weights = False

    def __init__(
        self,
        prompts: Mapping[int, CachedPrompt],
        settings: Mapping[str, Any],
        source: str,
        version: Callable[[], int],
    ) -> None:
        self.prompts = prompts
        self.settings = dict(settings)
        self.source = source  # the file, for error messages
        self._version_of = version
        self._jobs: dict[Any, tuple[list[Request], list[Rollout]]] = {}
        self._stats: list[dict[str, float]] = []

    @classmethod
    def from_file(cls, path: str | Path, version: Callable[[], int]) -> TeacherResponses:
        """The responses of ``path``; ``version()``: the learner's current version."""
        file = read_responses(Path(path))
        if file.settings is None:
            raise ValueError(f"{path}: no teacher responses (run `eopd-ray generate` first)")
        return cls(file.prompts, file.settings, str(path), version)

    @property
    def version(self) -> int:
        return self._version_of()

    def rollouts(
        self,
        requests: Sequence[Request],
        n: int,
        *,
        temperature: float,
        top_p: float,
        max_tokens: int,
    ) -> list[Rollout]:
        """``len(requests) * n`` rollouts in request order, samples of a request together."""
        self._check_sampling(n, temperature, top_p, max_tokens)
        version = self.version
        out: list[Rollout] = []
        for prompt_id, prompt_ids, answer in requests:
            cached = self.prompts.get(prompt_id)
            if cached is None:
                raise ValueError(
                    f"prompt {prompt_id} is not in the teacher's responses {self.source} "
                    "(run `eopd-ray generate` with this config)"
                )
            if cached.prompt_ids != list(prompt_ids):
                raise ValueError(
                    f"prompt {prompt_id}: its tokens differ from those in {self.source}"
                )
            for index, response in enumerate(cached.responses):
                ids = response.response_ids.tolist()
                out.append(
                    Rollout(
                        prompt_id=prompt_id,
                        sample_index=index,
                        prompt_ids=list(prompt_ids),
                        response_ids=ids,
                        behaviour_logprobs=response.logprobs.tolist(),
                        versions=[version] * len(ids),
                        finish_reason=response.finish_reason,
                        answer=answer,
                    )
                )
        return out

    def _check_sampling(self, n: int, temperature: float, top_p: float, max_tokens: int) -> None:
        """The run must ask for what the file holds (train checks the whole header at start)."""
        asked = {
            "rollout.samples_per_prompt": n,
            "rollout.temperature": temperature,
            "rollout.top_p": top_p,
            "rollout.max_response_tokens": max_tokens,
        }
        for key, value in asked.items():
            if self.settings.get(key) != value:
                raise ValueError(
                    f"{self.source} was generated with {key} {self.settings.get(key)}, "
                    f"the run asks for {value}"
                )

    def submit(
        self,
        requests: Sequence[Request],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        seed: int | None = None,  # the file's responses were seeded by the header's seed
    ) -> list[Any]:
        """One ``ObjectRef`` of ``list[Rollout]`` for all of ``requests`` (none if empty)."""
        import ray

        requests = list(requests)
        if not requests:
            return []
        started = time.perf_counter()
        rollouts = self.rollouts(
            requests, n, temperature=temperature, top_p=top_p, max_tokens=max_tokens
        )
        ref = ray.put(rollouts)
        self._jobs[ref] = (requests, rollouts)
        self._stats.append(
            {
                "kind": "replay",
                "sequences": float(len(rollouts)),
                "tokens": float(sum(len(r) for r in rollouts)),
                "seconds": time.perf_counter() - started,
            }
        )
        return [ref]

    def job_requests(self, ref: Any) -> list[Request]:
        return self._jobs[ref][0]

    def resubmit(self, ref: Any) -> Any:
        """A fresh object of the same rollouts (the pipeline calls this only after a failure)."""
        import ray

        requests, rollouts = self._jobs.pop(ref)
        new = ray.put(rollouts)
        self._jobs[new] = (requests, rollouts)
        return new

    def forget(self, ref: Any) -> None:
        self._jobs.pop(ref, None)

    def stream_of(self, ref: Any) -> None:
        """Replayed chunks exist whole at once: nothing to stream."""
        return None

    def push_weights(self, weights: Any, version: int, overlap: bool = False) -> dict[str, Any]:
        """Nothing to load (see the module docstring): the timings of a push that took no time."""
        return {"seconds": 0.0, "actors": []}

    def finish_push(self) -> dict[str, Any]:
        """No push is ever in flight."""
        return {}

    def discard_push(self) -> None:
        """No push is ever in flight."""

    def pop_stats(self) -> list[dict[str, float]]:
        """Per-``submit`` records since the last pop (``seconds`` spent building the rollouts)."""
        out, self._stats = self._stats, []
        return out

    def shutdown(self) -> None:
        self._jobs.clear()
