"""Offline BPE tokenizers for the tiny models, trained with the `tokenizers` library on
the built-in corpus (`corpus.py`).

- CLIP style (Stable Diffusion's text encoder and the CLIP scorer): lowercase, CLIP's
  word splitting, byte-level alphabet, `</w>` end-of-word suffix; specials
  `<|startoftext|>` / `<|endoftext|>` at the end of the vocab, as in openai/clip.
- Qwen style (Qwen2.5-VL): GPT-2/Qwen byte-level BPE with Qwen's pre-tokenizer regex;
  Qwen's special tokens come right after the BPE vocab, in the real model's order.

Vocabs are laid out like the real ones: the 256 byte symbols first (in GPT-2's
`bytes_to_unicode` order), then one token per merge in merge order, then specials.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer, Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN_PRETOKENIZE_REGEX

from regen.tiny_models.corpus import corpus

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
CLIP_MAX_LENGTH = 77
CLIP_BPE_VOCAB = 1024  # the 512 byte symbols (plain and with `</w>`) plus merges; specials come on top

# Same order as Qwen2.5-VL (151643 ...); here they follow the tiny BPE vocab.
QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_BPE_VOCAB = 4096  # before specials
QWEN_MAX_LENGTH = 32768

# As in transformers' CLIPTokenizer / Qwen2Tokenizer, so training splits text exactly as they do.
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_QWEN_SPLIT = QWEN_PRETOKENIZE_REGEX

Merges = list[tuple[str, str]]
_PUA = 0xE000  # private-use characters stand for "byte symbol + </w>" while training


def bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in the order real vocabs use."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _train_merges(tok: Tokenizer, trainer: trainers.BpeTrainer, docs: Iterable[str]) -> Merges:
    tok.train_from_iterator(docs, trainer=trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [_as_pair(m) for m in merges]


def _as_pair(merge: list[str] | str) -> tuple[str, str]:
    # Recent `tokenizers` store a merge as ["a", "b"], older ones as "a b".
    a, b = merge if isinstance(merge, list) else merge.split(" ", 1)
    return a, b


def _vocab(base: list[str], merges: Merges, specials: tuple[str, ...]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token in [*base, *(a + b for a, b in merges), *specials]:
        vocab.setdefault(token, len(vocab))
    return vocab


@cache
def clip_vocab_and_merges() -> tuple[dict[str, int], Merges]:
    """CLIP's BPE with `</w>` suffixes, trained deterministically.

    The `tokenizers` trainer's own `end_of_word_suffix` numbers the suffixed symbols in
    hash-map order, so equal-count merges come out in a different order from run to run.
    Instead, words are split here with CLIP's normalizer and pre-tokenizer, each word's
    last symbol is swapped for a private-use character standing for "symbol + `</w>`",
    and a suffix-free BPE (whose alphabet is sorted, hence stable) is trained on that.
    """
    base = bytes_to_unicode()
    ends = [chr(_PUA + i) for i in range(len(base))]
    to_end = dict(zip(base, ends, strict=True))
    from_end = {e: b + "</w>" for b, e in zip(base, ends, strict=True)}

    splitter = Tokenizer(models.BPE())
    splitter.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    splitter.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )

    def marked(doc: str) -> str:
        words = splitter.pre_tokenizer.pre_tokenize_str(splitter.normalizer.normalize_str(doc))
        return " ".join(w[:-1] + to_end[w[-1]] for w, _ in words)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=CLIP_BPE_VOCAB,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=[*base, *ends],
    )
    merges = [
        ("".join(from_end.get(c, c) for c in a), "".join(from_end.get(c, c) for c in b))
        for a, b in _train_merges(tok, trainer, [marked(doc) for doc in corpus()])
    ]
    return _vocab([*base, *(c + "</w>" for c in base)], merges, (CLIP_BOS, CLIP_EOS)), merges


@cache
def qwen_vocab_and_merges() -> tuple[dict[str, int], Merges]:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=QWEN_BPE_VOCAB,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    merges = _train_merges(tok, trainer, corpus())
    return _vocab(bytes_to_unicode(), merges, QWEN_SPECIALS), merges


def clip_tokenizer() -> CLIPTokenizer:
    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),  # type: ignore[arg-type]  # tuples: "a b" strings fail at run time
        bos_token=CLIP_BOS,
        eos_token=CLIP_EOS,
        unk_token=CLIP_EOS,
        pad_token=CLIP_EOS,
        model_max_length=CLIP_MAX_LENGTH,
    )


def qwen_tokenizer(chat_template: str | None = None) -> Qwen2Tokenizer:
    vocab, merges = qwen_vocab_and_merges()
    tok = Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),  # type: ignore[arg-type]  # tuples: "a b" strings fail at run time
        unk_token=None,  # type: ignore[arg-type]  # byte-level BPE has no unknown token
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=QWEN_MAX_LENGTH,
        chat_template=chat_template,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    tok.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIALS)})
    return tok
