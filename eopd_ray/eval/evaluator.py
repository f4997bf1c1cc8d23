"""Evaluation actors: sample k responses per problem with vLLM, check them, measure token entropy.

``EvalActor`` (a plain, synchronous Ray actor) owns, for one checkpoint:

- a vLLM engine: the sampler's own :class:`~eopd_ray.actors.sampler.SamplerActor`, used in-process
  (same engine set-up: ``VLLM_CPU_KVCACHE_SPACE``, single-process engine, ``enforce_eager``; tied
  embeddings are fine here since weights are never reloaded);
- a :class:`~eopd_ray.eval.scoring.Verifier` (math-verify in a child process, time-bounded);
- when ``entropy.samples_per_problem > 0`` or a ``teacher`` is set, the same checkpoint as a
  Hugging Face model (:class:`~eopd_ray.actors.teacher.TeacherModel`): one prefill of prompt +
  response gives the entropy of the full next-token distribution at each response token, computed
  in chunks of positions by :func:`eopd_ray.vocab.vocab_stats` (vLLM returns only top-k
  log-probs, so its entropy would be approximate), and the exact log-probs of the sampled tokens
  and of the teacher's top-k ids;
- with ``teacher`` set, the reference teacher (a TeacherModel over ``teacher.path``, loaded once
  per actor): log-probs, entropy and top-k of the same samples, for the ``teacher_ref`` block
  (``eopd_ray.eval.reference``: reverse KL, top-k forward KL, entropy histograms).

``evaluate(benchmark, problems)`` returns one JSON-ready record per problem (see
:func:`problem_record`). Sampling seeds depend on (seed, benchmark, problem id) only, so results do
not depend on the number of actors or on how problems are batched. ``EvalPool`` starts
``actors.num_actors`` of them and hands out chunks of problems to whichever actor is free.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from eopd_ray.eval.benchmarks import EvalProblem
from eopd_ray.eval.config import CheckpointSpec, EvalConfig
from eopd_ray.eval.metrics import HIGH_ENTROPY_NATS, entropy_edges, entropy_histogram
from eopd_ray.ray_env import role_placement


def problem_seed_id(benchmark: str, problem_id: str) -> int:
    """A stable non-negative int per (benchmark, problem): the sampler's per-prompt seed key."""
    return zlib.crc32(f"{benchmark}/{problem_id}".encode()) & 0x7FFFFFFF


class EvalActor:
    """One checkpoint's vLLM engine, verifier and (optionally) scoring models; see the module doc.

    Start it through :class:`EvalPool` (or ``ray.remote(EvalActor)``) and call ``ready()`` first.
    """

    def __init__(self, config: EvalConfig, checkpoint: CheckpointSpec) -> None:
        from transformers import AutoTokenizer

        from eopd_ray.actors.sampler import SamplerActor
        from eopd_ray.eval.scoring import Verifier

        started = time.perf_counter()
        self.config, self.checkpoint = config, checkpoint
        dtype = checkpoint.dtype or config.dtype
        sampling, actors = config.sampling, config.actors
        self.template = checkpoint.chat_template or sampling.chat_template
        self.max_model_len = (
            actors.max_model_len or sampling.max_prompt_tokens + sampling.max_tokens
        )
        self._engine = SamplerActor(
            checkpoint.path,
            dtype=dtype,
            max_model_len=self.max_model_len,
            kv_cache_gib=actors.kv_cache_gib,
            gpu_memory_utilization=actors.gpu_memory_utilization,
            tensor_parallel_size=actors.tensor_parallel_size,
            enforce_eager=actors.enforce_eager,
            seed=sampling.seed,
            allow_tied_on_cpu=True,  # no in-place reloads here: the stale packed layer is moot
        )
        self.max_model_len = self._engine.max_model_len  # clamped to the model's positions
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint.path)
        self._verifier = Verifier(config.scoring.timeout_s)
        self._own_model, self._teacher = self._scoring_models(config, checkpoint)
        self._edges = entropy_edges(config.entropy.bin_width, config.entropy.max_nats)
        self.startup_s = time.perf_counter() - started
        self._totals = {"problems": 0, "samples": 0, "tokens": 0, "generate_s": 0.0, "busy_s": 0.0}

    @staticmethod
    def _scoring_models(config: EvalConfig, checkpoint: CheckpointSpec) -> tuple[Any, Any]:
        """(the checkpoint as an HF scoring model or None, the reference teacher or None)."""
        from eopd_ray.actors.teacher import TeacherModel, check_shared_vocabulary

        own = teacher = None
        if config.entropy.samples_per_problem > 0 or config.teacher is not None:
            own = TeacherModel(
                checkpoint.path, config.entropy.dtype, top_k=1, chunk_size=config.entropy.chunk_size
            )
        if config.teacher is not None:
            ref = config.teacher
            # The teacher's top-k ids must be valid rows of the checkpoint's output layer.
            vocab = check_shared_vocabulary(ref.path, checkpoint.path)
            teacher = TeacherModel(
                ref.path,
                ref.dtype or config.entropy.dtype,
                top_k=ref.top_k,
                chunk_size=ref.chunk_size,
                vocab_limit=vocab.scoring_vocab_size,
            )
        return own, teacher

    def ready(self) -> dict[str, Any]:
        """Start-up facts; ``ray.get`` it once to wait for the engine."""
        return {
            "checkpoint": self.checkpoint.name,
            "startup_s": self.startup_s,
            "max_model_len": self.max_model_len,
            "chat_template": self.template,
            **self._engine.ready(),
        }

    def stats(self) -> dict[str, float]:
        """Totals since start: problems, samples, response tokens, generate and busy seconds."""
        return dict(self._totals)

    def evaluate(self, benchmark: str, problems: Sequence[EvalProblem]) -> list[dict[str, Any]]:
        """Sample, check and measure ``problems``; one record per problem, in order."""
        from eopd_ray.actors.chat import PromptTooLongError, render_prompt

        started = time.perf_counter()
        sampling = self.config.sampling
        records: dict[str, dict[str, Any]] = {}
        requests: list[tuple[int, list[int], str]] = []
        by_seed_id: dict[int, EvalProblem] = {}
        for problem in problems:
            try:
                ids = render_prompt(
                    self.tokenizer,
                    problem.problem,
                    self.template,
                    sampling.suffix,
                    max_tokens=min(sampling.max_prompt_tokens, self.max_model_len - 1),
                )
            except PromptTooLongError as exc:
                records[problem.id] = {"id": problem.id, "gold": problem.gold, "skipped": str(exc)}
                continue
            seed_id = problem_seed_id(benchmark, problem.id)
            by_seed_id[seed_id] = problem
            requests.append((seed_id, ids, problem.gold))
        generated = time.perf_counter()
        rollouts = self._engine.generate(
            requests,
            n=sampling.samples,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
        )
        self._totals["generate_s"] += time.perf_counter() - generated
        for start in range(0, len(rollouts), sampling.samples):
            group = rollouts[start : start + sampling.samples]
            problem = by_seed_id[group[0].prompt_id]
            records[problem.id] = self.problem_record(problem, group)
        self._totals["problems"] += len(problems)
        self._totals["samples"] += len(rollouts)
        self._totals["tokens"] += sum(len(r.response_ids) for r in rollouts)
        self._totals["busy_s"] += time.perf_counter() - started
        return [records[p.id] for p in problems]

    def problem_record(self, problem: EvalProblem, group: Sequence[Any]) -> dict[str, Any]:
        """The JSON record of one problem's samples (rollouts of the sampler, in sample order).

        Keys: ``id``, ``gold``, ``prompt_tokens``, per sample ``responses`` (text), ``answers``
        (last ``\\boxed{}`` or None), ``correct``, ``status`` (the verdict's), ``lengths``
        (tokens), ``finish_reasons`` (``length`` when cut by max_tokens or the context); and, when
        measured, ``entropy_counts`` (histogram over the config's bins), ``entropy_high`` (tokens
        with entropy >= 1 nat) and ``entropy_samples``; with a reference teacher ``teacher_ref``
        (``eopd_ray.eval.reference.reference_record``)."""
        texts = [self.tokenizer.decode(r.response_ids, skip_special_tokens=True) for r in group]
        verdicts = [self._verifier.check(text, problem.gold) for text in texts]
        prompt_len = len(group[0].prompt_ids)
        record: dict[str, Any] = {
            "id": problem.id,
            "gold": problem.gold,
            "prompt_tokens": prompt_len,
            "responses": texts,
            "answers": [v.answer for v in verdicts],
            "correct": [v.correct for v in verdicts],
            "status": [v.status for v in verdicts],
            "lengths": [len(r.response_ids) for r in group],
            # vLLM reports a response cut at the context length as "stop"
            "finish_reasons": [
                "length"
                if prompt_len + len(r.response_ids) >= self.max_model_len
                else r.finish_reason
                for r in group
            ],
        }
        if self._own_model is not None:
            record.update(self._measure(group))
        return record

    def _measure(self, group: Sequence[Any]) -> dict[str, Any]:
        """Entropy histogram (first ``entropy.samples_per_problem`` samples) and ``teacher_ref``
        (first ``teacher.samples_per_problem``); each sample is scored by the checkpoint once."""
        from eopd_ray.eval.reference import reference_record

        n_entropy = self.config.entropy.samples_per_problem
        ref = self.config.teacher
        entropy_of: dict[int, np.ndarray] = {}
        out: dict[str, Any] = {}
        if ref is not None:
            wanted = [i for i, r in enumerate(group[: ref.samples_per_problem]) if r.response_ids]
            scorable = [i for i in wanted if self._teacher_can_score(group[i])]
            pairs = [(group[i].prompt_ids, group[i].response_ids) for i in scorable]
            teacher = self._teacher.score_batch(pairs)
            own = self._own_model.score_ids_batch(pairs, [t.topk_ids for t in teacher])
            entropy_of.update((i, s.entropy) for i, s in zip(scorable, own, strict=True))
            out["teacher_ref"] = reference_record(
                teacher, own, ref.tau, self._edges, unscored=len(wanted) - len(scorable)
            )
        if n_entropy > 0:
            measured = [i for i, r in enumerate(group[:n_entropy]) if r.response_ids]
            rest = [i for i in measured if i not in entropy_of]
            scores = self._own_model.score_batch(
                [(group[i].prompt_ids, group[i].response_ids) for i in rest]
            )
            entropy_of.update((i, s.entropy) for i, s in zip(rest, scores, strict=True))
            parts = [entropy_of[i] for i in measured]
            entropy = np.concatenate(parts) if parts else np.zeros(0)
            out["entropy_counts"] = entropy_histogram(entropy, self._edges)
            out["entropy_high"] = int((entropy >= HIGH_ENTROPY_NATS).sum())
            out["entropy_samples"] = len(measured)
        return out

    def _teacher_can_score(self, rollout: Any) -> bool:
        """False for a sample the teacher cannot score (longer than its context, or a token of
        the checkpoint's padded vocabulary rows); it is counted as ``unscored``."""
        try:
            self._teacher.validate(rollout.prompt_ids, rollout.response_ids)
        except ValueError:
            return False
        return True

    def shutdown(self) -> None:
        """Stop the engine and the verifier; call before ``ray.kill``."""
        self._verifier.close()
        self._engine.shutdown()


class EvalPool:
    """``actors.num_actors`` evaluation actors over one checkpoint, one chunk in flight each."""

    def __init__(self, config: EvalConfig, checkpoint: CheckpointSpec) -> None:
        import ray

        actors = config.actors
        options = role_placement(
            actors.num_cpus, actors.num_gpus, actors.resources, actors.label_selector
        )
        options["max_restarts"] = 0
        remote = ray.remote(EvalActor)
        self.actors = [
            remote.options(**options).remote(config, checkpoint) for _ in range(actors.num_actors)
        ]
        try:
            self.ready_info = ray.get([a.ready.remote() for a in self.actors])
        except Exception:
            self.shutdown()
            raise

    def imap(
        self, benchmark: str, chunks: Sequence[Sequence[EvalProblem]]
    ) -> Iterator[list[dict[str, Any]]]:
        """Records of each chunk, in completion order; every free actor takes the next chunk."""
        import ray

        queue = list(reversed(chunks))
        in_flight: dict[Any, Any] = {}
        idle = list(self.actors)
        while queue or in_flight:
            while queue and idle:
                actor = idle.pop()
                in_flight[actor.evaluate.remote(benchmark, queue.pop())] = actor
            done, _ = ray.wait(list(in_flight), num_returns=1)
            idle.append(in_flight.pop(done[0]))
            yield ray.get(done[0])

    def stats(self) -> list[dict[str, float]]:
        import ray

        return ray.get([a.stats.remote() for a in self.actors])

    def shutdown(self) -> None:
        """Stop every engine cleanly (frees /dev/shm), then the actors."""
        import ray

        for actor in self.actors:
            with contextlib.suppress(Exception):  # already dead, or stuck: killed below anyway
                ray.get(actor.shutdown.remote(), timeout=60)
            ray.kill(actor)
        self.actors = []
