"""Bottleneck ResNet in the Detectron2 layout (``stem.conv1``, ``res2.0.conv1``, ``res2.0.shortcut``).

Frozen batch norm everywhere, as in the official Mask2Former configs, so the ImageNet statistics
of the pretrained weights are kept during fine-tuning with small batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Conv2d, FrozenBatchNorm2d


class BasicStem(nn.Module):
    """7x7/2 convolution + max-pool: stride 4, ``stem_out_channels`` channels."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64):
        super().__init__()
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False,
                            norm=FrozenBatchNorm2d(out_channels), activation=F.relu_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block; a projection shortcut when channels change."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int = 1,
                 stride_in_1x1: bool = False, dilation: int = 1):
        super().__init__()
        if in_channels != out_channels:
            self.shortcut = Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False,
                                   norm=FrozenBatchNorm2d(out_channels))
        else:
            self.shortcut = None
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1, bias=False,
                            norm=FrozenBatchNorm2d(bottleneck_channels), activation=F.relu_)
        self.conv2 = Conv2d(bottleneck_channels, bottleneck_channels, kernel_size=3, stride=stride_3x3,
                            padding=dilation, dilation=dilation, bias=False,
                            norm=FrozenBatchNorm2d(bottleneck_channels), activation=F.relu_)
        # the block's ReLU after the residual add (Conv2d adds the residual before its activation)
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False,
                            norm=FrozenBatchNorm2d(out_channels), activation=F.relu_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return self.conv3(out, residual=shortcut)  # relu(conv3(out) + shortcut), fused on the CPU


class ResNet(nn.Module):
    """ResNet-50/101/152 returning the four stages ``res2`` (1/4) .. ``res5`` (1/32)."""

    def __init__(self, stage_blocks: tuple[int, int, int, int] = (3, 4, 6, 3), stem_out_channels: int = 64,
                 res2_out_channels: int = 256, stride_in_1x1: bool = False, res5_dilation: int = 1):
        super().__init__()
        self.stem = BasicStem(3, stem_out_channels)
        in_channels = stem_out_channels
        out_channels = res2_out_channels
        bottleneck = res2_out_channels // 4
        self.out_channels: dict[str, int] = {}
        self.out_strides: dict[str, int] = {}
        stride_total = 4
        for idx, num_blocks in enumerate(stage_blocks):
            name = f"res{idx + 2}"
            first_stride = 1 if idx == 0 or (idx == 3 and res5_dilation == 2) else 2
            dilation = res5_dilation if idx == 3 else 1
            blocks = []
            for b in range(num_blocks):
                blocks.append(BottleneckBlock(in_channels, out_channels, bottleneck,
                                              stride=first_stride if b == 0 else 1,
                                              stride_in_1x1=stride_in_1x1, dilation=dilation))
                in_channels = out_channels
            self.add_module(name, nn.Sequential(*blocks))
            stride_total *= first_stride
            self.out_channels[name] = out_channels
            self.out_strides[name] = stride_total
            out_channels *= 2
            bottleneck *= 2
        self.stage_names = list(self.out_channels)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        out = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            out[name] = x
        return out

    forward = forward_features
