"""Small model configs shared by the model tests (a few layers of 64 channels: seconds on a CPU)."""

from __future__ import annotations

from m2f_core.config import BackboneConfig, Mask2FormerConfig

NUM_CLASSES = 5
DEC_LAYERS = 4
NUM_QUERIES = 7


def small_config(backbone: str) -> Mask2FormerConfig:
    if backbone == "swin":
        bb = BackboneConfig(type="swin", embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
                            window_size=4)
    else:
        bb = BackboneConfig(type="resnet", stage_blocks=(1, 1, 1, 1), res2_out_channels=64,
                            stem_out_channels=32)
    return Mask2FormerConfig(
        class_names=[f"class{i}" for i in range(NUM_CLASSES)], backbone=bb,
        conv_dim=64, mask_dim=64, hidden_dim=64, nheads=4, enc_layers=1, dec_layers=DEC_LAYERS,
        dim_feedforward=64, enc_dim_feedforward=64, num_queries=NUM_QUERIES,
    )
