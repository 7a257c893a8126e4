"""Backbones and their blocks. No training code, no data code (DESIGN.md section 2).

Every backbone follows the denoiser contract ``net(z_t, logsnr, cond) -> output`` and declares a
:class:`~kinema.models.backbone.BackboneSpec`. A new backbone is one file plus one
:func:`~kinema.models.backbone.register_backbone` call (below, for kinema's own).
"""

from __future__ import annotations

from kinema.models.backbone import (BackboneSpec, Registration, backbone_entry, backbone_names, backbone_spec,
                                    build_backbone, register_backbone, unregister_backbone)
from kinema.models.autoencoder import CausalAE, CausalAEConfig, VideoAutoencoder
from kinema.models.unet import UNet3D, UNetConfig, upgrade_v1_state
from kinema.models.temporal import VideoLDM, VideoLDMConfig
from kinema.models.temporal_decoder import TemporalDecoder, TemporalDecoderConfig
from kinema.models.walt import WALT, WALTConfig

register_backbone("unet3d", UNetConfig, UNet3D, section="unet", upgrade_state=upgrade_v1_state)
register_backbone("walt", WALTConfig, WALT, section="walt")
register_backbone("causal_ae", CausalAEConfig, CausalAE, section="causal_ae", kind="autoencoder")
register_backbone("video_ldm", VideoLDMConfig, VideoLDM, section="video_ldm")
register_backbone("temporal_decoder", TemporalDecoderConfig, TemporalDecoder, section="temporal_decoder",
                  kind="autoencoder")

__all__ = ["BackboneSpec", "CausalAE", "CausalAEConfig", "Registration", "UNet3D", "UNetConfig", "VideoAutoencoder",
           "VideoLDM", "VideoLDMConfig", "WALT", "WALTConfig", "backbone_entry", "backbone_names", "backbone_spec",
           "build_backbone", "register_backbone", "unregister_backbone", "TemporalDecoder", "TemporalDecoderConfig"]
