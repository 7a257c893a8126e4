"""Text encoders: a built-in offline encoder trained jointly with the diffusion model, and an adapter
for frozen ``transformers`` encoders loaded from a local directory.

Both map a list of captions to ``(text_emb [B, L, D], text_mask [B, L] bool)``, the text fields of
:class:`kinema.conditioning.Conditioning`. Imagen Video (Ho et al. 2022, section 2) conditions on the
token embeddings of a frozen T5-XXL; :class:`TransformersTextEncoder` gives the same with any local
T5 / CLIP text model. For runs without downloads, :class:`BuiltinTextEncoder` is a small
transformer over :class:`HashTokenizer` word ids, trained from scratch with the U-Net.

:class:`TextConditioned` bundles a backbone with its text encoder so one module owns every trained
parameter (optimizer, EMA and checkpoint see the built-in encoder's weights; a frozen
``transformers`` encoder is kept outside ``parameters()``/``state_dict()`` and referenced by path).
It keeps the denoiser contract: ``forward(z_t, logsnr, cond)`` is the backbone's.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TEXT_ENCODERS = ("none", "builtin", "transformers")


@dataclass
class TextConfig:
    """Which text encoder conditions the model (``model.text`` in the config)."""

    encoder: Literal["none", "builtin", "transformers"] = "none"  # builtin: trained, saved; transformers: frozen
    max_length: int = 16  # tokens per caption (longer captions are truncated)
    path: Optional[str] = None  # transformers: a LOCAL directory holding the model and its tokenizer
    vocab_size: int = 4096  # builtin: hashed word buckets (plus padding id 0)
    dim: int = 64  # builtin: width of the token embeddings (= model.unet.text_dim)
    depth: int = 2  # builtin: transformer layers
    heads: int = 4  # builtin: attention heads

    def __post_init__(self) -> None:
        if self.encoder not in TEXT_ENCODERS:
            raise ValueError(f"model.text.encoder must be one of {TEXT_ENCODERS}, got {self.encoder!r}")
        for name in ("max_length", "vocab_size", "dim", "depth", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.text.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"model.text.dim={self.dim} must be divisible by model.text.heads={self.heads}")
        if self.encoder == "transformers" and not self.path:
            raise ValueError("model.text.encoder=transformers needs model.text.path=<local model directory>")


# ---- built-in tokenizer and encoder -----------------------------------------------------------------


class HashTokenizer:
    """Deterministic word-level tokenizer for any caption, with no vocabulary file.

    Lower-cases, splits into words (runs of letters/digits) and punctuation marks, and maps each
    to ``1 + crc32(word) mod vocab_size`` (the hashing trick, Weinberger et al. 2009); id 0 is
    padding. crc32 is stable across processes and platforms (unlike Python's ``hash``). Distinct
    words may share a bucket; with 4096 buckets a small caption vocabulary rarely collides.
    """

    WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")

    def __init__(self, vocab_size: int = 4096, max_length: int = 16) -> None:
        self.vocab_size, self.max_length = vocab_size, max_length

    def words(self, caption: str) -> list[str]:
        return self.WORD.findall(caption.lower())

    def token_id(self, word: str) -> int:
        return 1 + zlib.crc32(word.encode("utf-8")) % self.vocab_size

    def __call__(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """captions -> ``(ids [B, max_length] long, mask [B, max_length] bool)``; "" gives an all-False mask."""
        if isinstance(captions, str):
            raise TypeError(f"HashTokenizer takes a list of captions, got the string {captions!r}")
        ids = torch.zeros(len(captions), self.max_length, dtype=torch.long)
        for i, caption in enumerate(captions):
            tokens = [self.token_id(w) for w in self.words(str(caption))][: self.max_length]
            ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids, ids > 0


class _EncoderLayer(nn.Module):
    """Pre-LN transformer layer: ``x + attn(LN(x))``, ``x + mlp(LN(x))``, attention through SDPA."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor, attend: Tensor) -> Tensor:  # x [B, L, D], attend [B, 1, L, L] bool
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)  # [B, heads, L, d/heads]
        x = x + self.proj(o.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class BuiltinTextEncoder(nn.Module):
    """Small transformer encoder over :class:`HashTokenizer` ids, trained jointly with the diffusion
    model: token + learned position embeddings, ``depth`` pre-LN layers, a final LayerNorm.

    ``forward(captions: list[str]) -> (text_emb [B, L, dim], text_mask [B, L])``. Real tokens attend
    to real tokens; every token also attends to itself, so a caption with no tokens (the null text)
    stays finite (its rows are masked downstream anyway).
    """

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.dim = cfg.dim
        self.tokenizer = HashTokenizer(cfg.vocab_size, cfg.max_length)
        self.token_embedding = nn.Embedding(cfg.vocab_size + 1, cfg.dim, padding_idx=0)
        self.position_embedding = nn.Parameter(torch.randn(cfg.max_length, cfg.dim) * 0.02)
        self.layers = nn.ModuleList(_EncoderLayer(cfg.dim, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        device = self.position_embedding.device
        ids, mask = self.tokenizer(captions)
        ids, mask = ids.to(device), mask.to(device)
        x = self.token_embedding(ids) + self.position_embedding  # [B, L, D]
        eye = torch.eye(ids.shape[1], dtype=torch.bool, device=device)
        attend = (mask[:, None, :] | eye)[:, None]  # [B, 1, L, L]: real keys, and always oneself
        for layer in self.layers:
            x = layer(x, attend)
        return self.norm(x), mask


# ---- frozen transformers encoders ----------------------------------------------------------------


class TransformersTextEncoder:
    """A frozen ``transformers`` text encoder (T5EncoderModel, CLIPTextModel, or any model whose
    output has ``last_hidden_state``) and its tokenizer, loaded from a LOCAL directory only
    (``local_files_only=True``; nothing is downloaded). Not an ``nn.Module`` on purpose: its weights
    are not trained, not in the EMA and not saved in kinema checkpoints; the config keeps the path.

    ``__call__(captions) -> (text_emb [B, max_length, D] float32, text_mask [B, max_length] bool)``,
    without gradients. Embeddings are cached per caption (on CPU), so the captions of a dataset are
    encoded once per run; ``cache_info()`` reports hits and misses.
    """

    def __init__(self, path: str | Path, max_length: int = 16, device: str | torch.device = "cpu") -> None:
        try:
            import transformers
        except ImportError as e:
            raise ImportError("model.text.encoder=transformers needs the optional extra: "
                              "pip install 'kinema[text]' (transformers)") from e
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise FileNotFoundError(f"text encoder path {self.path} is not a local directory (kinema never downloads "
                                    f"models; save one with save_pretrained and give its folder)")
        self.max_length = max_length
        config = transformers.AutoConfig.from_pretrained(self.path, local_files_only=True)
        kind = getattr(config, "model_type", "")
        if kind in ("t5", "mt5", "umt5"):
            model_cls = transformers.T5EncoderModel
        elif kind in ("clip", "clip_text_model"):
            model_cls = transformers.CLIPTextModel
        else:
            model_cls = transformers.AutoModel
        self.model = model_cls.from_pretrained(self.path, local_files_only=True).eval().requires_grad_(False)
        if hasattr(self.model, "get_encoder") and model_cls is transformers.AutoModel:
            self.model = self.model.get_encoder()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.dim = int(getattr(self.model.config, "d_model", None) or self.model.config.hidden_size)
        self.device = torch.device(device)
        self.model.to(self.device)
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}
        self.hits = self.misses = 0

    def __deepcopy__(self, memo) -> "TransformersTextEncoder":
        return self  # frozen: copies of a model (e.g. the EMA copy) share it and its cache

    def to(self, device: str | torch.device) -> "TransformersTextEncoder":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def cache_info(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "size": len(self._cache)}

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        tok = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        mask = tok["attention_mask"].to(self.device)
        out = self.model(input_ids=tok["input_ids"].to(self.device), attention_mask=mask)
        return out.last_hidden_state.float().cpu(), mask.bool().cpu()  # [B, L, D], [B, L]

    def __call__(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        if isinstance(captions, str):
            raise TypeError(f"TransformersTextEncoder takes a list of captions, got the string {captions!r}")
        captions = [str(c) for c in captions]
        new = list(dict.fromkeys(c for c in captions if c not in self._cache))
        self.hits += len(captions) - len(new)
        self.misses += len(new)
        if new:
            emb, mask = self._encode(new)
            for i, c in enumerate(new):
                self._cache[c] = (emb[i], mask[i])
        emb = torch.stack([self._cache[c][0] for c in captions]).to(self.device)
        mask = torch.stack([self._cache[c][1] for c in captions]).to(self.device)
        return emb, mask


def build_text_encoder(cfg: TextConfig):
    """The encoder ``cfg`` names: a :class:`BuiltinTextEncoder` (trainable module), a
    :class:`TransformersTextEncoder` (frozen, from ``cfg.path``), or None for ``encoder: none``."""
    if cfg.encoder == "builtin":
        return BuiltinTextEncoder(cfg)
    if cfg.encoder == "transformers":
        return TransformersTextEncoder(cfg.path, cfg.max_length)
    return None


# ---- a backbone with its text encoder --------------------------------------------------------------


class TextConditioned(nn.Module):
    """A backbone plus the text encoder that feeds it. ``forward(z_t, logsnr, cond)`` is the
    backbone's (the denoiser contract is unchanged: ``cond.text_emb`` / ``text_mask`` come from
    :meth:`encode_text`, called once per batch by the trainer and once per prompt list by sampling).

    A :class:`BuiltinTextEncoder` is a registered submodule (trained, EMA'd, saved with the
    backbone); a :class:`TransformersTextEncoder` is frozen and held outside the module tree.
    """

    def __init__(self, net: nn.Module, text_encoder) -> None:
        super().__init__()
        self.net = net
        if isinstance(text_encoder, nn.Module):
            self.text_encoder = text_encoder
        else:
            self.frozen_text_encoder = text_encoder  # plain attribute: not a parameter, not saved

    @property
    def spec(self):
        """The backbone's :class:`~kinema.models.backbone.BackboneSpec`."""
        return self.net.spec

    def encoder(self):
        return self.text_encoder if "text_encoder" in self._modules else self.frozen_text_encoder

    def encode_text(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """captions (length B) -> ``(text_emb [B, L, D], text_mask [B, L])`` on this module's device."""
        enc = self.encoder()
        if not isinstance(enc, nn.Module):
            enc.to(next(self.net.parameters()).device)
        return enc(list(captions))

    def forward(self, z: Tensor, logsnr: Tensor, cond=None) -> Tensor:
        return self.net(z, logsnr, cond)


__all__ = ["BuiltinTextEncoder", "HashTokenizer", "TEXT_ENCODERS", "TextConditioned", "TextConfig",
           "TransformersTextEncoder", "build_text_encoder"]
