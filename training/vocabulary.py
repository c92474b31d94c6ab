"""Growing the text side's vocabulary with a project's new words before a fine-tune.

A word the tokenizer does not know whole is split into pieces. With the ``cpu-synthetic`` model's tiny tokenizer
(:func:`sag.text_encoder._tiny_tokenizer`) those pieces are single characters that its pre-training never used
(every base-domain word is in its word list), so "hexagon" and "heart" share ``h ##e ##a`` and training the word
embeddings to teach one moves the other. Giving each new word its own embedding row lets a fine-tune teach it without
touching any other word. For a pretrained wordpiece vocabulary (MiniLM) the split pieces already carry meaning and
most project words are whole; there it adds only words split into several pieces.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

import torch

from sag.text_encoder import TextEncoder

_WORD = re.compile(r"[a-z]+")


def new_words(encoder: TextEncoder, texts: Iterable[str], min_count: int = 1) -> list[str]:
    """The lower-case alphabetic words of ``texts`` seen at least ``min_count`` times that ``encoder``'s tokenizer
    splits into more than one piece, most frequent first (ties alphabetical)."""
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    counts = Counter(w for text in texts for w in _WORD.findall(text.lower()))
    tokenizer = encoder.tokenizer
    split = [w for w, n in counts.items() if n >= min_count and len(tokenizer.tokenize(w)) > 1]
    return sorted(split, key=lambda w: (-counts[w], w))


@torch.no_grad()
def add_words(encoder: TextEncoder, words: list[str]) -> list[str]:
    """Add ``words`` to ``encoder``'s tokenizer as whole words, each with a new row of the input embeddings
    initialised as the mean of the rows of the pieces it was split into (a start near what it read before, as
    for any new wordpiece; training moves it from there). Returns the words added (those not already whole). The
    tokenizer and the backbone's config grow in place, so a checkpoint saved afterwards rebuilds with them
    (:func:`sag.text_encoder.load_text_encoder`).
    """
    from tokenizers import AddedToken

    tokenizer = encoder.tokenizer
    pieces = {w: tokenizer.convert_tokens_to_ids(tokenizer.tokenize(w)) for w in words}
    pieces = {w: ids for w, ids in pieces.items() if len(ids) > 1}
    if not pieces:
        return []
    # single_word: "cross" is not matched inside "crossing"; normalized: matched after lower-casing, like the rest.
    tokenizer.add_tokens([AddedToken(w, single_word=True, normalized=True) for w in pieces])
    backbone = encoder.backbone
    old = backbone.get_input_embeddings().weight.shape[0]
    backbone.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows set below
    weight = backbone.get_input_embeddings().weight
    for word, ids in pieces.items():
        row = tokenizer.convert_tokens_to_ids(word)
        if row < old:
            raise RuntimeError(f"{word!r} was given the existing id {row}")
        weight[row] = weight[ids].mean(dim=0)
    return list(pieces)
