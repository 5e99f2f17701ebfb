"""A tiny tokenizer built offline from the dataset's own text, for models trained from scratch.

`word` level splits into words and punctuation marks, each carrying the single space before it
(GPT-2 style, so sequences stay short), plus other whitespace runs — decoding is exact; `char` level makes every character a token. Both are `tokenizers`
WordLevel models wrapped in `PreTrainedTokenizerFast`, saved and loaded like any HF tokenizer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from qsft.errors import ConfigError

PAD, BOS, EOT, UNK, DUMMY = "[PAD]", "[BOS]", "[EOT]", "[UNK]", "[DUMMY]"
SPECIAL_TOKENS = (PAD, BOS, EOT, UNK, DUMMY)
LEVELS = {"word": r" ?\w+| ?[^\w\s]|\s+", "char": ""}


MAX_ACTION_TOKENS = 5000


def build_tiny_tokenizer(texts: Iterable[str], level: str = "word", min_count: int = 1,
                         action_texts: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """Vocabulary = special tokens + every piece seen in `texts` (at least `min_count` times).

    `action_texts`: every distinct agent utterance also becomes one whole token, so an action is a
    single decision (plus the end-of-turn token). Fewer token-level bootstraps per environment step,
    and no max over noisy ratios at forced tokens (like "move" before every direction).
    """
    if level not in LEVELS:
        raise ConfigError(f"tiny tokenizer level must be one of {sorted(LEVELS)}, got {level!r}")
    splitter = pre_tokenizers.Split(Regex(LEVELS[level]) if level == "word" else "", behavior="isolated")
    counts: Counter[str] = Counter()
    for text, repeats in Counter(texts).items():  # datasets repeat observations: split each once
        for piece, _ in splitter.pre_tokenize_str(text):
            counts[piece] += repeats
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for piece, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if count >= min_count and piece not in vocab:
            vocab[piece] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = splitter
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, bos_token=BOS, eos_token=EOT, unk_token=UNK,
        additional_special_tokens=[DUMMY])
    if action_texts is not None:
        actions = sorted(set(action_texts))
        if len(actions) > MAX_ACTION_TOKENS:
            raise ConfigError(f"{len(actions)} distinct agent utterances: too many to make each one token "
                              f"(limit {MAX_ACTION_TOKENS}); turn action_tokens off")
        tokenizer.add_tokens(actions)
    return tokenizer
