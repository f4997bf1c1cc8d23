"""``TeacherResponses`` (``eopd_ray/actors/replay.py``): cached teacher responses as rollouts of
the current learner version, refusals of prompts or settings the file does not hold, and (slow,
a local Ray) the sampler-pool interface the pipeline drives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eopd_ray.actors.replay import TeacherResponses
from eopd_ray.generate import CachedPrompt, CachedResponse

SETTINGS = {
    "rollout.samples_per_prompt": 2,
    "rollout.temperature": 1.0,
    "rollout.top_p": 1.0,
    "rollout.max_response_tokens": 8,
}
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 8}


def _response(ids: list[int], reason: str = "stop") -> CachedResponse:
    logprobs = np.asarray([-0.5 * (i + 1) for i in range(len(ids))], dtype=np.float32)
    return CachedResponse(np.asarray(ids, dtype=np.int32), logprobs, reason)


def _replay(version: list[int]) -> TeacherResponses:
    prompts = {
        4: CachedPrompt(4, [1, 2], "8", (_response([5, 6, 7]), _response([5], "length"))),
        9: CachedPrompt(9, [1, 3], None, (_response([8, 8]), _response([9, 9, 9, 9]))),
    }
    return TeacherResponses(prompts, SETTINGS, "cache.jsonl", version=lambda: version[0])


def test_rollouts_are_the_cached_responses_at_the_learner_version() -> None:
    version = [3]
    replay = _replay(version)
    assert replay.needs_weights is False and replay.version == 3
    rollouts = replay.rollouts([(9, [1, 3], None), (4, [1, 2], "8")], 2, **SAMPLING)
    assert [(r.prompt_id, r.sample_index) for r in rollouts] == [(9, 0), (9, 1), (4, 0), (4, 1)]
    assert [r.response_ids for r in rollouts] == [[8, 8], [9, 9, 9, 9], [5, 6, 7], [5]]
    assert rollouts[2].behaviour_logprobs == [-0.5, -1.0, -1.5]  # the teacher's own log-probs
    assert [r.finish_reason for r in rollouts[2:]] == ["stop", "length"]
    assert rollouts[2].prompt_ids == [1, 2] and rollouts[2].answer == "8"
    assert all(r.versions == [3] * len(r) for r in rollouts)
    version[0] = 7  # the learner trained: later rollouts carry its new version, never stale
    assert replay.rollouts([(4, [1, 2], "8")], 2, **SAMPLING)[0].versions == [7, 7, 7]
    assert replay.push_weights(None, 7) == {"seconds": 0.0, "actors": []}


def test_a_prompt_the_file_lacks_or_holds_otherwise_is_a_one_line_error() -> None:
    replay = _replay([0])
    with pytest.raises(
        ValueError, match=r"prompt 5 is not in the teacher's responses cache\.jsonl"
    ):
        replay.rollouts([(5, [1, 2], None)], 2, **SAMPLING)
    with pytest.raises(ValueError, match=r"prompt 4: its tokens differ from those in cache\.jsonl"):
        replay.rollouts([(4, [1, 2, 3], "8")], 2, **SAMPLING)


@pytest.mark.parametrize(
    ("n", "sampling", "key"),
    [
        (1, SAMPLING, "rollout.samples_per_prompt"),
        (2, {**SAMPLING, "temperature": 0.7}, "rollout.temperature"),
        (2, {**SAMPLING, "max_tokens": 16}, "rollout.max_response_tokens"),
    ],
)
def test_sampling_settings_the_file_was_not_generated_with_are_refused(
    n: int, sampling: dict, key: str
) -> None:
    with pytest.raises(ValueError, match=rf"cache\.jsonl was generated with {key}"):
        _replay([0]).rollouts([(4, [1, 2], "8")], n, **sampling)


def test_from_file_refuses_an_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "none.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no teacher responses"):
        TeacherResponses.from_file(empty, version=lambda: 0)


@pytest.mark.slow
def test_submit_serves_object_refs_like_the_sampler_pool(ray_local: None) -> None:
    import ray

    replay = _replay([2])
    requests = [(4, [1, 2], "8"), (9, [1, 3], None)]
    assert replay.submit([], n=2, **SAMPLING) == []
    (ref,) = replay.submit(requests, n=2, seed=0, **SAMPLING)
    expected = replay.rollouts(requests, 2, **SAMPLING)
    assert [r.response_ids for r in ray.get(ref)] == [r.response_ids for r in expected]
    assert replay.job_requests(ref) == requests
    again = replay.resubmit(ref)
    assert again != ref and [r.prompt_id for r in ray.get(again)] == [4, 4, 9, 9]
    assert replay.job_requests(again) == requests
    stats = replay.pop_stats()
    assert [s["sequences"] for s in stats] == [4.0] and stats[0]["tokens"] == 10.0
    assert replay.pop_stats() == []
    replay.forget(again)
    with pytest.raises(KeyError):
        replay.job_requests(again)


def test_the_train_loop_gathers_no_weights_for_replayed_responses() -> None:
    from types import SimpleNamespace

    from eopd_ray.train import publish_weights

    class _Learner:
        def state_dict(self) -> dict:
            raise AssertionError("the learner's weights were gathered")

    roles = SimpleNamespace(samplers=_replay([1]), learner=_Learner())
    assert publish_weights(roles, 1) == {"seconds": 0.0, "actors": []}  # type: ignore[arg-type]
