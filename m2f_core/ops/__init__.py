"""Operators: multi-scale deformable attention (pure PyTorch reference, fused gather, C kernel)."""

from .ms_deform_attn import MSDeformAttn, ms_deform_attn_core, ms_deform_attn_fast, ms_deform_attn_gather

__all__ = ["MSDeformAttn", "ms_deform_attn_core", "ms_deform_attn_fast", "ms_deform_attn_gather"]
