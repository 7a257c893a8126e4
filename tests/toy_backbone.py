"""A deliberately tiny second backbone, registered from its own file: the proof that a backbone is an
addition (its config dataclass, its module, one register_backbone call) and that the trainer,
checkpoints, sampling and the CLI take it without a change elsewhere.

Per frame: a 1x3x3 conv, FiLM from the shared conditioning embedder, a segment-masked temporal mean
(frames mix only within their ``frame_segments`` segment), a zero-initialized 1x3x3 conv out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kinema.models import BackboneSpec, register_backbone
from kinema.models.embeddings import ConditioningEmbedding


@dataclass
class ToyConfig:
    in_channels: int = 3
    width: int = 8
    num_classes: int = 0
    freeze_input: bool = False  # freeze conv_in (a frozen layer inside a trainable part, like Video LDM's)
    scalar_conditions: tuple[str, ...] = ()  # embedded cond fields, e.g. guidance_weight (guided students)

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"ToyConfig.width must be >= 1, got {self.width}")


class ToyBackbone(nn.Module):
    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.embedding = ConditioningEmbedding(w, 2 * w, num_classes=cfg.num_classes,
                                               scalars=tuple(cfg.scalar_conditions))
        self.embedding.zero_init()
        self.conv_in = nn.Conv3d(cfg.in_channels, w, (1, 3, 3), padding=(0, 1, 1))
        self.film = nn.Linear(2 * w, 2 * w)
        self.mix = nn.Parameter(torch.tensor(0.5))
        self.conv_out = nn.Conv3d(w, cfg.in_channels, (1, 3, 3), padding=(0, 1, 1))
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        if cfg.freeze_input:
            self.conv_in.requires_grad_(False)

    @property
    def spec(self) -> BackboneSpec:
        return BackboneSpec(in_channels=self.cfg.in_channels, out_channels=self.cfg.in_channels,
                            num_classes=self.cfg.num_classes,
                            reads=("frame_segments",) + (("class_labels",) if self.cfg.num_classes else ())
                            + tuple(self.cfg.scalar_conditions))

    def forward(self, z, logsnr, cond=None):
        b, _, f = z.shape[:3]
        scale, shift = self.film(F.silu(self.embedding(logsnr, cond, b))).chunk(2, dim=1)  # [B, w] each
        h = F.silu(self.conv_in(z)) * (1 + scale[:, :, None, None, None]) + shift[:, :, None, None, None]
        segments = getattr(cond, "frame_segments", None)
        if segments is None:
            segments = torch.zeros(b, f, dtype=torch.long, device=z.device)
        same = (segments[:, :, None] == segments[:, None, :]).to(h.dtype)  # [B, F, F]
        mean = torch.einsum("bij,bcjhw->bcihw", same / same.sum(-1, keepdim=True), h)
        return self.conv_out(h + self.mix * mean)


register_backbone("toy", ToyConfig, ToyBackbone, replace=True)
