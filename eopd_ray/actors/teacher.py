"""The teacher model: prefill-only scoring of (prompt + rollout) with a Hugging Face causal LM.

For every response token the teacher returns (docs/design.md §1-2; ``rollout.TeacherScores``):

- ``logprobs``: log π_te of the sampled token (the OPD advantage's first term);
- ``entropy``: the entropy of the teacher's FULL next-token distribution (the EOPD gate H_te > τ);
- ``topk_ids`` / ``topk_logprobs``: the teacher's top-k tokens and their full-distribution
  log-probs (not renormalised; the learner renormalises over the top-k set for the forward KL).

:class:`TeacherModel` runs ONE prefill of prompt + response through the model body and scores
only the response positions (:meth:`TeacherModel.score_batch`: a right-padded batch;
:meth:`TeacherModel.score_ids_batch`: log-probs at given ids, e.g. a checkpoint scored at its
teacher's top-k ids by the evaluation, ``eopd_ray/eval/reference.py``); the
statistics come from ``eopd_ray/vocab.py``, which applies the output layer chunk by chunk, so
neither the [T, V] logits nor a [T, V] float32 tensor exist at once. :func:`check_shared_vocabulary`
is the start-up check that teacher and student share a vocabulary. The Serve deployment around the
model is ``eopd_ray/actors/teacher_deployment.py``, its driver-side client
``eopd_ray/actors/teacher_service.py``.

Vocabulary sizes. A model's ``vocab_size`` (rows of its output layer) may be padded beyond its
tokenizer (Qwen3: 151,936 rows for 151,669 tokens). The tokenizers must be identical; the model
sizes may differ. The teacher then scores over the first ``min(teacher, student)`` output rows
(``VocabInfo.scoring_vocab_size``, passed to the teacher as ``vocab_limit``): its distribution,
entropy and top-k are those of the softmax over these rows. Every top-k id is then a valid index
into the student's logits, and when both sizes are equal (the paper's Qwen3 pair) nothing is cut.
The rows cut are padding rows no tokenizer produces.

Importing this module loads nothing: transformers and models are loaded only when used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from eopd_ray.rollout import TeacherScores
from eopd_ray.vocab import VocabStats, output_layer_fn, vocab_stats

if TYPE_CHECKING:
    from eopd_ray.config import ModelConfig

__all__ = ["ScoresAtIds", "TeacherModel", "VocabInfo", "check_shared_vocabulary"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _to_scores(stats: Sequence[torch.Tensor]) -> TeacherScores:
    """(logprobs [n], entropy [n], topk_ids [n, k], topk_logprobs [n, k]) as TeacherScores."""
    # Copies: each record owns its arrays (not views into the whole batch's tensors).
    logprobs, entropy, topk_ids, topk_logprobs = (t.cpu().numpy() for t in stats)
    return TeacherScores(
        logprobs=logprobs.astype(np.float32),
        entropy=entropy.astype(np.float32),
        topk_ids=topk_ids.astype(np.int64),
        topk_logprobs=topk_logprobs.astype(np.float32),
    )


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
        stats, counts = self._response_stats(requests, top_k=self.top_k)
        fields = (stats.logprobs, stats.entropy, stats.topk_ids, stats.topk_logprobs)
        per_request = zip(*(torch.split(t, counts) for t in fields), strict=True)
        return [_to_scores(parts) for parts in per_request]

    @torch.inference_mode()
    def score_ids_batch(
        self,
        requests: Sequence[tuple[Sequence[int], Sequence[int]]],
        ids: Sequence[np.ndarray],
    ) -> list[ScoresAtIds]:
        """Like :meth:`score_batch`, but with log-probs at given ids instead of a top-k: for
        request i, ``ids[i]`` [len(response_i), m] (e.g. another model's top-k ids) -> its
        ``ids_logprobs`` [len(response_i), m], beside the sampled tokens' log-probs and the
        entropy. The evaluation scores a checkpoint at its teacher's top-k ids this way."""
        if len(ids) != len(requests):
            raise ValueError(f"{len(ids)} id arrays for {len(requests)} requests")
        if not requests:
            return []
        widths = {np.shape(block)[-1] for block in ids}
        for (_, response), block in zip(requests, ids, strict=True):
            if np.ndim(block) != 2 or np.shape(block)[0] != len(response) or len(widths) != 1:
                raise ValueError(
                    f"ids must be [len(response), m] with one m, got {np.shape(block)} for "
                    f"{len(response)} response tokens"
                )
        flat_ids = torch.as_tensor(np.concatenate([np.asarray(b, np.int64) for b in ids]))
        stats, counts = self._response_stats(requests, top_k=0, ids=flat_ids.to(self.device))
        fields = (stats.logprobs, stats.entropy, stats.ids_logprobs)
        return [
            ScoresAtIds(*(t.cpu().numpy().astype(np.float32) for t in parts))
            for parts in zip(*(torch.split(t, counts) for t in fields), strict=True)
        ]

    def _response_stats(
        self,
        requests: Sequence[tuple[Sequence[int], Sequence[int]]],
        *,
        top_k: int,
        ids: torch.Tensor | None = None,
    ) -> tuple[VocabStats, list[int]]:
        """One right-padded prefill of the (non-empty) ``requests``: the vocab statistics of all
        response tokens, flat [N] / [N, k] / [N, m] (``ids`` [N, m]), and the tokens per request."""
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
        stats = vocab_stats(
            output_layer_fn(response_hidden, self._head, self.softcap),
            targets,
            chunk_size=self.chunk_size,
            ids=ids,
            top_k=top_k,
            entropy=True,
            vocab_limit=self.vocab_limit,
            dtype=torch.float32,
        )
        return stats, counts


@dataclass(frozen=True)
class ScoresAtIds:
    """A model's view of one response at given ids, per response token (``score_ids_batch``)."""

    logprobs: np.ndarray  # [T] float32, log-prob of the sampled token
    entropy: np.ndarray  # [T] float32, entropy of the full distribution (nats)
    ids_logprobs: np.ndarray  # [T, m] float32, full-distribution log-probs at the given ids


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
