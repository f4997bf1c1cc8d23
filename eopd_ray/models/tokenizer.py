"""A small byte-level BPE tokenizer, trained locally, for the tiny teacher/student models.

No hub access is needed: ``train_tokenizer`` learns the merges from the given texts with the
``tokenizers`` library and wraps the result in a transformers fast tokenizer carrying Qwen-style
special tokens and a ChatML ``chat_template``. Digits are always split into single tokens so
that arithmetic on the synthetic math task is learnable by a tiny model.

``scripts/tokenizer.py`` trains one on the synthetic math corpus and saves it (``tokenizer.json`` +
``tokenizer_config.json``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_START = "<think>"
THINK_END = "</think>"
# Control tokens get the first ids, in this order, so every tokenizer built here agrees on them.
SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, IM_START, IM_END)
# As in Qwen3: whole added tokens, but not "special", so decoding keeps them in the text.
THINK_TOKENS: tuple[str, ...] = (THINK_START, THINK_END)

# ChatML, as Qwen's templates render it: one block per message, then the assistant header.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 768) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (deterministic for the same texts).

    ``vocab_size`` is an upper bound on everything (256 byte symbols, the special tokens and the
    merges): BPE stops earlier when no pair occurs twice. The two think tokens come on top."""
    if not 264 <= vocab_size <= 65536:
        raise ValueError(f"vocab_size must be in [264, 65536], got {vocab_size}")
    tok = Tokenizer(models.BPE())
    # Every digit is isolated first (with at most its leading space, as " 3"), so no token can
    # ever hold two digits: numbers are spelled digit by digit, which makes arithmetic learnable.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(" ?[0-9]"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """The transformers wrapper with eos/pad, the ChatML template and no BOS (as Qwen)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> Path:
    """Save ``tokenizer.json`` + ``tokenizer_config.json`` with the chat template inside the
    config (the format every transformers/vLLM version reads) and a portable class name."""
    out = Path(out_dir)
    tokenizer.save_pretrained(out, save_jinja_files=False)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    # transformers 5 writes its internal "TokenizersBackend"; 4.x only knows the old name, which
    # 5.x still maps to the same class.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return out
