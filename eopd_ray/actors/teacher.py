"""The teacher: prefill-only scoring of (prompt + rollout) behind a Ray Serve deployment.

For every response token the teacher returns (DESIGN.md §1-2; ``rollout.TeacherScores``):

- ``logprobs``: log π_te of the sampled token (the OPD advantage's first term);
- ``entropy``: the entropy of the teacher's FULL next-token distribution (the EOPD gate H_te > τ);
- ``topk_ids`` / ``topk_logprobs``: the teacher's top-k tokens and their full-distribution
  log-probs (not renormalised; the learner renormalises over the top-k set for the forward KL).

Layers, from pure to distributed:

1. :func:`token_stats` / :func:`teacher_token_stats` / :func:`hidden_token_stats`: the
   statistics, computed in float32 over chunks of positions, so that a [T, V] float32 tensor is
   never held for long sequences. From hidden states, the output layer itself is applied chunk by
   chunk, so not even the [T, V] logits of the model's dtype exist at once.
2. :class:`TeacherModel`: a Hugging Face causal LM; :meth:`TeacherModel.score` runs ONE prefill of
   prompt + response through the model body and scores only the response positions;
   :meth:`TeacherModel.score_batch` does the same for a right-padded batch.
3. :class:`TeacherDeployment`: the Ray Serve deployment; ``@serve.batch`` gathers concurrent
   requests into one padded forward.
4. :class:`TeacherService`: the driver-side client (start, score, wait, shutdown).
5. :func:`check_shared_vocabulary`: the start-up check that teacher and student share a vocabulary.

Vocabulary sizes. A model's ``vocab_size`` (rows of its output layer) may be padded beyond its
tokenizer (Qwen3: 151,936 rows for 151,669 tokens). The tokenizers must be identical; the model
sizes may differ. The teacher then scores over the first ``min(teacher, student)`` output rows
(``VocabInfo.scoring_vocab_size``, passed to the teacher as ``vocab_limit``): its distribution,
entropy and top-k are those of the softmax over these rows. Every top-k id is then a valid index
into the student's logits, and when both sizes are equal (the paper's Qwen3 pair) nothing is cut.
The rows cut are padding rows no tokenizer produces.

Importing this module starts nothing: ``ray.serve`` is imported here (the deployment class is
declared with ``@serve.deployment``), transformers and models are loaded only when used.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from ray import serve

from eopd_ray.ray_env import role_placement
from eopd_ray.rollout import Rollout, TeacherScores

if TYPE_CHECKING:
    import ray
    from ray.serve.handle import DeploymentHandle, DeploymentResponse

    from eopd_ray.config import ModelConfig, TeacherServiceConfig

__all__ = [
    "TeacherDeployment",
    "TeacherModel",
    "TeacherService",
    "VocabInfo",
    "check_shared_vocabulary",
    "deployment_options",
    "hidden_token_stats",
    "teacher_token_stats",
    "token_stats",
    "unique_app_name",
]

TokenStats = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------------------------
# 1. Chunked statistics
# --------------------------------------------------------------------------------------------


def token_stats(
    logits_fn: Callable[[int, int], torch.Tensor],
    targets: torch.Tensor,
    k: int,
    chunk_size: int,
    vocab_limit: int | None = None,
) -> TokenStats:
    """Per-position statistics of next-token distributions, computed chunk by chunk.

    ``logits_fn(start, end)`` returns the logits of positions ``start:end`` ([end - start, V], any
    float dtype); ``targets`` [T] are the tokens whose log-probs are wanted. At most one chunk of
    ``chunk_size`` positions is ever materialised in float32.

    Returns ``(logprobs [T], entropy [T], topk_ids [T, k], topk_logprobs [T, k])``: float32, except
    int64 ids. Entropy (nats) is exact over the whole (possibly ``vocab_limit``-cut) vocabulary;
    top-k log-probs are full-distribution log-probs, sorted in decreasing order.
    """
    if targets.dim() != 1:
        raise ValueError(f"targets must be 1-D [T], got shape {tuple(targets.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    num_positions = targets.shape[0]
    targets = targets.long()
    logprobs = torch.empty(num_positions, dtype=torch.float32, device=targets.device)
    entropy = torch.empty(num_positions, dtype=torch.float32, device=targets.device)
    topk_ids = torch.empty(num_positions, k, dtype=torch.long, device=targets.device)
    topk_logprobs = torch.empty(num_positions, k, dtype=torch.float32, device=targets.device)
    for start in range(0, num_positions, chunk_size):
        end = min(start + chunk_size, num_positions)
        logits = logits_fn(start, end)
        if vocab_limit is not None:
            logits = logits[:, :vocab_limit]
        vocab = logits.shape[-1]
        if k > vocab:
            raise ValueError(f"k ({k}) exceeds the vocabulary size ({vocab})")
        chunk_targets = targets[start:end].to(logits.device)
        if int(chunk_targets.max()) >= vocab or int(chunk_targets.min()) < 0:
            raise ValueError(f"target ids must lie in [0, {vocab}), got {chunk_targets.tolist()}")
        logp = torch.log_softmax(logits.float(), dim=-1)
        del logits
        probs = logp.exp()
        # -Σ p log p; positions with p = 0 (logit -inf) contribute 0, not 0 * -inf = nan.
        plogp = torch.where(probs > 0, probs * logp, torch.zeros((), device=logp.device))
        entropy[start:end] = -plogp.sum(dim=-1).to(entropy.device)
        del probs, plogp
        logprobs[start:end] = logp.gather(1, chunk_targets[:, None])[:, 0].to(logprobs.device)
        values, ids = logp.topk(k, dim=-1)
        topk_logprobs[start:end] = values.to(topk_logprobs.device)
        topk_ids[start:end] = ids.to(topk_ids.device)
        del logp
    return logprobs, entropy, topk_ids, topk_logprobs


def teacher_token_stats(
    logits: torch.Tensor,
    targets: torch.Tensor,
    k: int,
    chunk_size: int,
    vocab_limit: int | None = None,
) -> TokenStats:
    """:func:`token_stats` of given logits [T, V] (any float dtype) for targets [T]."""
    if logits.dim() != 2 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected logits [T, V] and targets [T], got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    return token_stats(lambda s, e: logits[s:e], targets, k, chunk_size, vocab_limit)


def hidden_token_stats(
    hidden: torch.Tensor,
    output_layer: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    k: int,
    chunk_size: int,
    vocab_limit: int | None = None,
    softcap: float | None = None,
) -> TokenStats:
    """:func:`token_stats` of ``output_layer(hidden)`` with the output layer applied per chunk.

    ``hidden`` [T, H] are final (normed) hidden states; ``softcap``: Gemma-style final logit
    soft-capping ``softcap * tanh(logits / softcap)``, when the model has it."""

    def logits_fn(start: int, end: int) -> torch.Tensor:
        logits = output_layer(hidden[start:end])
        if softcap is not None:
            logits = softcap * torch.tanh(logits.float() / softcap)
        return logits

    return token_stats(logits_fn, targets, k, chunk_size, vocab_limit)


def _to_scores(stats: TokenStats) -> TeacherScores:
    # Copies: each record owns its arrays (not views into the whole batch's tensors).
    logprobs, entropy, topk_ids, topk_logprobs = (t.cpu().numpy() for t in stats)
    return TeacherScores(
        logprobs=logprobs.astype(np.float32),
        entropy=entropy.astype(np.float32),
        topk_ids=topk_ids.astype(np.int64),
        topk_logprobs=topk_logprobs.astype(np.float32),
    )


# --------------------------------------------------------------------------------------------
# 2. The model
# --------------------------------------------------------------------------------------------


class TeacherModel:
    """A Hugging Face causal LM that scores responses in one prefill pass.

    ``vocab_limit``: score over the first ``vocab_limit`` output rows only (see the module doc;
    ``check_shared_vocabulary(...).scoring_vocab_size``). ``fp32_head``: apply the output layer in
    float32 (a float32 copy of its weight is kept) rather than in ``dtype``; with bfloat16 models
    this removes the ~1e-2 rounding of bf16 logits from the teacher's log-probs. ``device``:
    default ``cuda`` when a GPU is visible, else ``cpu``.
    """

    def __init__(
        self,
        path: str | Path,
        dtype: str = "bfloat16",
        top_k: int = 16,
        chunk_size: int = 512,
        vocab_limit: int | None = None,
        device: str | None = None,
        fp32_head: bool = False,
    ) -> None:
        from transformers import AutoModelForCausalLM

        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.path = str(path)
        self.dtype = dtype
        self.top_k = top_k
        self.chunk_size = chunk_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=_DTYPES[dtype])
        self.model.to(self.device).eval()
        text_config = self.model.config.get_text_config()
        self.vocab_size = int(text_config.vocab_size)
        if vocab_limit is not None and not 1 <= vocab_limit <= self.vocab_size:
            raise ValueError(f"vocab_limit must be in [1, {self.vocab_size}], got {vocab_limit}")
        self.vocab_limit = vocab_limit
        self.scoring_vocab_size = vocab_limit or self.vocab_size
        if not 1 <= top_k <= self.scoring_vocab_size:
            raise ValueError(f"top_k must be in [1, {self.scoring_vocab_size}], got {top_k}")
        self.max_positions: int | None = getattr(text_config, "max_position_embeddings", None)
        self.softcap: float | None = getattr(text_config, "final_logit_softcapping", None)
        self.pad_id = int(getattr(text_config, "pad_token_id", None) or 0)
        # The body returns final-normed hidden states; the output layer is applied per chunk.
        self._body = self.model.get_decoder()
        head = self.model.get_output_embeddings()
        self.fp32_head = fp32_head
        if fp32_head:
            if not isinstance(head, torch.nn.Linear):
                raise ValueError(f"fp32_head needs a Linear output layer, got {type(head)}")
            weight = head.weight.detach().float()
            bias = None if head.bias is None else head.bias.detach().float()
            self._head: Callable[[torch.Tensor], torch.Tensor] = lambda h: (
                torch.nn.functional.linear(h.float(), weight, bias)
            )
        else:
            self._head = head

    @classmethod
    def from_config(
        cls,
        model: ModelConfig,
        top_k: int,
        chunk_size: int = 512,
        vocab_limit: int | None = None,
        device: str | None = None,
        fp32_head: bool = False,
    ) -> TeacherModel:
        return cls(model.path, model.dtype, top_k, chunk_size, vocab_limit, device, fp32_head)

    def info(self) -> dict[str, Any]:
        """The teacher's vocabulary and scoring settings (for start-up checks and the logs)."""
        from transformers import AutoTokenizer

        tokenizer_size: int | None
        try:
            tokenizer_size = len(AutoTokenizer.from_pretrained(self.path))
        except (OSError, ValueError):  # a model folder without a tokenizer
            tokenizer_size = None
        return {
            "path": self.path,
            "dtype": self.dtype,
            "device": str(self.device),
            "vocab_size": self.vocab_size,
            "scoring_vocab_size": self.scoring_vocab_size,
            "tokenizer_size": tokenizer_size,
            "top_k": self.top_k,
            "chunk_size": self.chunk_size,
            "fp32_head": self.fp32_head,
            "max_positions": self.max_positions,
        }

    def validate(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> None:
        """Raise ``ValueError`` for a request the model cannot score."""
        if len(prompt_ids) == 0:
            raise ValueError("the teacher needs a non-empty prompt")
        total = len(prompt_ids) + len(response_ids)
        if self.max_positions is not None and total > self.max_positions:
            raise ValueError(
                f"prompt + response has {total} tokens > the teacher's {self.max_positions}"
            )
        bad = [t for t in (*prompt_ids, *response_ids) if not 0 <= t < self.scoring_vocab_size]
        if bad:
            raise ValueError(
                f"token ids outside the teacher's vocabulary [0, {self.scoring_vocab_size}): "
                f"{bad[:5]}"
            )

    def score(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> TeacherScores:
        """Teacher statistics of every response token, from one prefill of prompt + response."""
        return self.score_batch([(prompt_ids, response_ids)])[0]

    @torch.inference_mode()
    def score_batch(
        self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]
    ) -> list[TeacherScores]:
        """:meth:`score` of many (prompt_ids, response_ids) pairs in one right-padded forward.

        The response token j (0-based) is predicted by the hidden state at position
        ``len(prompt) + j - 1``. Right padding leaves the real tokens' positions and causal
        attention unchanged, so the result equals the unbatched one (up to float rounding).
        """
        if not requests:
            return []
        for prompt, response in requests:
            self.validate(prompt, response)
        sequences = [list(prompt) + list(response) for prompt, response in requests]
        max_len = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), max_len), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), max_len), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, : len(seq)] = 1
        hidden = self._body(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            use_cache=False,
        ).last_hidden_state  # [B, L, H]
        # Gather the predicting positions of all responses into one [N, H] block, score it in
        # chunks, then split the statistics back per request.
        rows, cols, counts = [], [], []
        for row, (prompt, response) in enumerate(requests):
            start = len(prompt) - 1
            rows.extend([row] * len(response))
            cols.extend(range(start, start + len(response)))
            counts.append(len(response))
        row_index = torch.tensor(rows, dtype=torch.long, device=self.device)
        col_index = torch.tensor(cols, dtype=torch.long, device=self.device)
        response_hidden = hidden[row_index, col_index]  # [N, H]
        del hidden
        targets = torch.tensor(
            [t for _, response in requests for t in response], dtype=torch.long, device=self.device
        )
        stats = hidden_token_stats(
            response_hidden,
            self._head,
            targets,
            self.top_k,
            self.chunk_size,
            self.vocab_limit,
            self.softcap,
        )
        per_request = zip(*(torch.split(t, counts) for t in stats), strict=True)
        return [_to_scores(parts) for parts in per_request]


# --------------------------------------------------------------------------------------------
# 3. The Serve deployment
# --------------------------------------------------------------------------------------------


@serve.deployment(name="TeacherDeployment")
class TeacherDeployment:
    """One teacher replica. Concurrent :meth:`score` calls are gathered by ``@serve.batch`` into
    one padded forward (up to ``max_batch_size`` requests, waiting at most
    ``batch_wait_timeout_s`` for a batch to fill); the forward runs in a worker thread so the
    replica stays responsive. Each request is validated on its own first, so a bad request fails
    alone instead of failing the batch it would have joined."""

    def __init__(
        self,
        path: str,
        dtype: str,
        top_k: int,
        chunk_size: int,
        vocab_limit: int | None,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        fp32_head: bool = False,
    ) -> None:
        self.model = TeacherModel(path, dtype, top_k, chunk_size, vocab_limit, fp32_head=fp32_head)
        # The decorator's arguments are defaults; the configured values are set per replica.
        self._score_batch.set_max_batch_size(max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._batch_sizes: list[int] = []
        self._tokens_scored = 0
        self._busy_s = 0.0

    async def score(self, prompt_ids: list[int], response_ids: list[int]) -> TeacherScores:
        """The teacher's statistics of one response (batched with concurrent calls)."""
        self.model.validate(prompt_ids, response_ids)
        return await self._score_batch(prompt_ids, response_ids)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _score_batch(
        self, prompt_ids: list[list[int]], response_ids: list[list[int]]
    ) -> list[TeacherScores]:
        self._batch_sizes.append(len(prompt_ids))
        start = time.perf_counter()
        requests = list(zip(prompt_ids, response_ids, strict=True))
        results = await asyncio.to_thread(self.model.score_batch, requests)
        self._busy_s += time.perf_counter() - start
        self._tokens_scored += sum(len(p) + len(r) for p, r in requests)
        return results

    def info(self) -> dict[str, Any]:
        """Vocabulary and scoring settings of the teacher (``TeacherModel.info``)."""
        return self.model.info()

    def stats(self) -> dict[str, Any]:
        """This replica's batch sizes seen so far, tokens prefilled and seconds spent scoring."""
        return {
            "batch_sizes": list(self._batch_sizes),
            "tokens_scored": self._tokens_scored,
            "busy_s": self._busy_s,
        }


def deployment_options(service: TeacherServiceConfig) -> dict[str, Any]:
    """``TeacherDeployment.options(...)`` for a service config: resources and replica scaling.

    A fixed ``num_replicas`` when min == max, else Serve autoscaling on ongoing requests. Each
    replica accepts two batches' worth of requests, so the next batch fills while one runs."""
    options: dict[str, Any] = {
        "ray_actor_options": role_placement(
            service.num_cpus, service.num_gpus, service.resources, service.label_selector
        ),
        "max_ongoing_requests": 2 * service.max_batch_size,
    }
    if service.min_replicas == service.max_replicas:
        options["num_replicas"] = service.min_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": service.min_replicas,
            "initial_replicas": service.min_replicas,
            "max_replicas": service.max_replicas,
            "target_ongoing_requests": service.target_ongoing_requests,
            "upscale_delay_s": service.upscale_delay_s,
            "downscale_delay_s": service.downscale_delay_s,
            "look_back_period_s": service.look_back_period_s,
        }
    return options


# --------------------------------------------------------------------------------------------
# 4. The driver-side client
# --------------------------------------------------------------------------------------------


class TeacherService:
    """A running teacher Serve application, seen from sync driver code.

    ``score(rollout)`` returns a :class:`DeploymentResponse` at once. To wait on teacher results
    together with other Ray work (sampler refs, learner refs), turn responses into ObjectRefs with
    :meth:`to_ref` (Serve's ``DeploymentResponse._to_object_ref_sync``, a DeveloperAPI in Ray 2.60)
    and ``ray.wait`` on everything in flight; ``ray.get`` of such a ref is a TeacherScores. Note
    that ``to_ref`` blocks until the request is assigned to a replica: immediate while replicas
    have free slots (``max_ongoing_requests`` = 2 x max_batch_size each), otherwise until one frees
    up, a natural back-pressure on the driver. :meth:`results` simply waits for many responses.
    """

    def __init__(self, handle: DeploymentHandle, app_name: str, info: dict[str, Any]) -> None:
        self.handle = handle
        self.app_name = app_name
        self.info = info  # TeacherModel.info() of a replica
        self.startup_s: float | None = None

    @classmethod
    def start(
        cls,
        teacher: ModelConfig,
        service: TeacherServiceConfig,
        top_k: int,
        app_name: str = "eopd-teacher",
        vocab_limit: int | None = None,
        fp32_head: bool = False,
    ) -> TeacherService:
        """Deploy the teacher as Serve application ``app_name`` and block until it is running.

        Ray must be initialised. Serve is started without an HTTP proxy if it is not running yet
        (the teacher is reached through handles only). ``vocab_limit``:
        ``check_shared_vocabulary(...).scoring_vocab_size``; ``fp32_head``: see TeacherModel."""
        begin = time.perf_counter()
        serve.start(proxy_location="Disabled")
        app = TeacherDeployment.options(**deployment_options(service)).bind(
            teacher.path,
            teacher.dtype,
            top_k,
            service.chunk_size,
            vocab_limit,
            service.max_batch_size,
            service.batch_wait_timeout_s,
            fp32_head,
        )
        handle = serve.run(app, name=app_name, route_prefix=None)
        info = handle.info.remote().result()
        # By reference, so that responses can become ObjectRefs (to_ref) whatever the defaults.
        out = cls(handle.options(method_name="score", _by_reference=True), app_name, info)
        out.startup_s = time.perf_counter() - begin
        return out

    def score_ids(
        self, prompt_ids: Sequence[int], response_ids: Sequence[int]
    ) -> DeploymentResponse:
        return self.handle.remote(list(prompt_ids), list(response_ids))

    def score(self, rollout: Rollout) -> DeploymentResponse:
        """Non-blocking: a response whose result is the rollout's :class:`TeacherScores`."""
        return self.score_ids(rollout.prompt_ids, rollout.response_ids)

    @staticmethod
    def to_ref(response: DeploymentResponse, timeout_s: float | None = None) -> ray.ObjectRef:
        """The response as an ObjectRef for ``ray.wait`` / ``ray.get`` (see the class doc)."""
        return response._to_object_ref_sync(_timeout_s=timeout_s)

    def score_ref(self, rollout: Rollout) -> ray.ObjectRef:
        return self.to_ref(self.score(rollout))

    @staticmethod
    def results(
        responses: Sequence[DeploymentResponse], timeout_s: float | None = None
    ) -> list[TeacherScores]:
        """Wait for all responses (in order); ``timeout_s`` bounds the whole wait."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        out = []
        for response in responses:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                out.append(response.result(timeout_s=left))
            except TimeoutError as exc:
                raise TimeoutError(f"teacher results not ready within {timeout_s} s") from exc
        return out

    def stats(self) -> dict[str, Any]:
        """Batch sizes and timing of the replica that answers (one replica's view)."""
        return self.handle.options(method_name="stats").remote().result()

    def shutdown(self) -> None:
        """Delete this application (Serve itself keeps running for other applications)."""
        serve.delete(self.app_name)


def unique_app_name(prefix: str = "eopd-teacher") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------------------------
# 5. Shared vocabulary
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VocabInfo:
    tokenizer_size: int  # len(tokenizer), identical for both
    teacher_vocab_size: int  # output rows of the teacher model
    student_vocab_size: int  # output rows of the student model
    scoring_vocab_size: int  # rows the teacher scores over: min of the two (module doc)


def _first_differences(teacher: dict[str, int], student: dict[str, int], limit: int = 5) -> str:
    t_by_id = {i: tok for tok, i in teacher.items()}
    s_by_id = {i: tok for tok, i in student.items()}
    diffs = []
    for i in sorted(set(t_by_id) | set(s_by_id)):
        t_tok, s_tok = t_by_id.get(i), s_by_id.get(i)
        if t_tok != s_tok:
            diffs.append(f"id {i}: teacher {t_tok!r} vs student {s_tok!r}")
            if len(diffs) == limit:
                break
    return "; ".join(diffs)


def check_shared_vocabulary(teacher_path: str | Path, student_path: str | Path) -> VocabInfo:
    """Raise ``ValueError`` unless teacher and student share one tokenizer vocabulary.

    The token -> id maps (``get_vocab()``, added tokens included) must be identical, and both
    models must have at least one output row per token. The models' ``vocab_size`` may differ
    (padding); the returned ``scoring_vocab_size`` is what the teacher must score over."""
    from transformers import AutoConfig, AutoTokenizer

    teacher_tok = AutoTokenizer.from_pretrained(str(teacher_path))
    student_tok = AutoTokenizer.from_pretrained(str(student_path))
    teacher_vocab, student_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    if teacher_vocab != student_vocab:
        raise ValueError(
            "teacher and student tokenizers differ "
            f"(teacher {teacher_path}: {len(teacher_vocab)} tokens, student {student_path}: "
            f"{len(student_vocab)} tokens); first differences: "
            f"{_first_differences(teacher_vocab, student_vocab)}. On-policy distillation needs one "
            "shared vocabulary: pick a teacher and student of the same model family."
        )
    tokenizer_size = len(teacher_tok)
    sizes = {}
    for role, path in (("teacher", teacher_path), ("student", student_path)):
        size = int(AutoConfig.from_pretrained(str(path)).get_text_config().vocab_size)
        if size < tokenizer_size:
            raise ValueError(
                f"{role} model {path} has vocab_size {size} < {tokenizer_size} tokens in its "
                "tokenizer: some token ids have no output row"
            )
        sizes[role] = size
    return VocabInfo(
        tokenizer_size=tokenizer_size,
        teacher_vocab_size=sizes["teacher"],
        student_vocab_size=sizes["student"],
        scoring_vocab_size=min(sizes.values()),
    )
