"""Operators: multi-scale deformable attention (pure PyTorch reference and a fused-gather fast path)."""

from .ms_deform_attn import MSDeformAttn, ms_deform_attn_core, ms_deform_attn_gather

__all__ = ["MSDeformAttn", "ms_deform_attn_core", "ms_deform_attn_gather"]
