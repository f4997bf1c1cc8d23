"""Prompt templating: a math problem -> the chat-templated prompt token ids the sampler consumes.

Templates (docs/design.md §1), with ``query = problem + "\\n" + suffix`` (just ``problem`` when the
suffix is empty):

- ``qwen3_nothink``:
  ``<|im_start|>user\\n{query}<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>``
  (Qwen3's non-thinking mode, exactly as the paper writes it: the response starts right after
  ``</think>``);
- ``qwen3_base``: the same without the think block (``...<|im_start|>assistant\\n``), used by GRPO;
- ``model``: the tokenizer's own chat template, one user message, ``add_generation_prompt=True``;
- ``auto``: ``qwen3_nothink`` when the tokenizer knows Qwen's ``<|im_start|>`` and ``<think>``
  tokens, ``model`` otherwise.

The text is tokenized with ``add_special_tokens=False``: every control token comes from the
template itself (a BOS the model's own template writes is not doubled).
"""

from __future__ import annotations

from typing import Any, Literal

ChatTemplate = Literal["auto", "qwen3_nothink", "qwen3_base", "model"]

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_START = "<think>"
THINK_END = "</think>"

QWEN3_BASE = IM_START + "user\n{query}" + IM_END + "\n" + IM_START + "assistant\n"
QWEN3_NOTHINK = QWEN3_BASE + THINK_START + "\n\n" + THINK_END


class PromptTooLongError(ValueError):
    """The templated prompt has more tokens than allowed; the driver counts and skips it."""

    def __init__(self, num_tokens: int, max_tokens: int) -> None:
        super().__init__(f"prompt has {num_tokens} tokens, more than the maximum {max_tokens}")
        self.num_tokens = num_tokens
        self.max_tokens = max_tokens


def build_query(problem: str, suffix: str = "") -> str:
    """The user message: the problem, then the instruction suffix on its own line."""
    return f"{problem}\n{suffix}" if suffix else problem


def _single_token_id(tokenizer: Any, token: str) -> int | None:
    """The id of ``token`` when the tokenizer has it as one whole token, else None."""
    vocab = tokenizer.get_vocab()
    return vocab.get(token)


def looks_like_qwen(tokenizer: Any) -> bool:
    """True when the tokenizer has Qwen's ChatML and think tokens as whole tokens."""
    return all(
        _single_token_id(tokenizer, token) is not None
        for token in (IM_START, IM_END, THINK_START, THINK_END)
    )


def resolve_template(tokenizer: Any, template: str) -> str:
    """``auto`` -> ``qwen3_nothink`` or ``model``; other names are checked and returned."""
    if template == "auto":
        return "qwen3_nothink" if looks_like_qwen(tokenizer) else "model"
    if template not in ("qwen3_nothink", "qwen3_base", "model"):
        raise ValueError(
            f"unknown chat template {template!r}; expected auto, qwen3_nothink, qwen3_base or model"
        )
    return template


def render_prompt_text(tokenizer: Any, problem: str, template: str, suffix: str = "") -> str:
    """The templated prompt as text (what :func:`render_prompt` tokenizes)."""
    query = build_query(problem, suffix)
    template = resolve_template(tokenizer, template)
    if template == "qwen3_nothink":
        return QWEN3_NOTHINK.format(query=query)
    if template == "qwen3_base":
        return QWEN3_BASE.format(query=query)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "chat template 'model' needs a tokenizer with a chat_template; this one has none "
            "(use qwen3_nothink or qwen3_base)"
        )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": query}], tokenize=False, add_generation_prompt=True
    )
    if not isinstance(text, str):  # some tokenizers return a list for a single conversation
        text = text[0]
    return text


def render_prompt(
    tokenizer: Any,
    problem: str,
    template: str = "auto",
    suffix: str = "",
    max_tokens: int | None = None,
) -> list[int]:
    """Token ids of the chat-templated prompt for ``problem``.

    Raises :class:`PromptTooLongError` (a ``ValueError``) when the prompt has more than
    ``max_tokens`` tokens (``RolloutConfig.max_prompt_tokens``); prompts are never truncated.
    """
    text = render_prompt_text(tokenizer, problem, template, suffix)
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if max_tokens is not None and len(ids) > max_tokens:
        raise PromptTooLongError(len(ids), max_tokens)
    return ids
