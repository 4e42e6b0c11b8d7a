"""Swin Transformer backbone in the layout of the official Mask2Former ``D2SwinTransformer``.

Names: ``patch_embed.proj``, ``layers.i.blocks.j.attn.relative_position_bias_table``,
``layers.i.downsample.reduction``, output norms ``norm0..norm3``. Feature maps of any size are
padded to the window size inside each block, as in the official code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import DropPath
from ..ops import onednn


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * num_windows, ws, ws, C); H and W are multiples of ws."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, c)


def window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """(B * num_windows, ws, ws, C) -> (B, H, W, C)."""
    b = windows.shape[0] // ((h // window_size) * (w // window_size))
    x = windows.view(b, h // window_size, w // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn.linear(onednn.linear(x, self.fc1, "gelu"), self.fc2)  # exact (erf) GELU


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
        coords = coords.flatten(1)  # (2, ws*ws)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (ws*ws, ws*ws, 2)
        rel = rel + (window_size - 1)
        index = rel[..., 0] * (2 * window_size - 1) + rel[..., 1]
        self.register_buffer("relative_position_index", index)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * nW, N, C); mask: (nW, N, N) of 0 / -100 or None."""
        qkv = onednn.linear(x, self.qkv)
        out = window_self_attention(qkv, self.num_heads, self.scale, self.position_bias(), mask)
        return onednn.linear(out, self.proj)

    def position_bias(self) -> torch.Tensor:
        """(heads, N, N) learned bias of every pair of window positions."""
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)


def window_self_attention(qkv: torch.Tensor, num_heads: int, scale: float, position_bias: torch.Tensor,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """The attention between the qkv projection and the output projection: (B * nW, N, 3C) ->
    (B * nW, N, C); ``position_bias`` (heads, N, N), ``mask`` (nW, N, N) of 0 / -100 or None."""
    bw, n, c3 = qkv.shape
    c = c3 // 3
    qkv = qkv.reshape(bw, n, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B*nW, heads, N, d)
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = attn + position_bias.unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        attn = attn.view(bw // nw, nw, num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, n, n)
    attn = attn.softmax(dim=-1)
    return (attn @ v).transpose(1, 2).reshape(bw, n, c)


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention + MLP, pre-norm residuals."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float,
                 qkv_bias: bool, drop_path: float):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, H*W, C); shift_mask: (nW, N, N), used by shifted blocks."""
        mask = shift_mask if self.shift_size > 0 else None
        x = x + self.drop_path(self._window_attention(x, h, w, mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _window_attention(self, x: torch.Tensor, h: int, w: int, mask: torch.Tensor | None) -> torch.Tensor:
        """The official order: pad, roll, partition, attention, reverse, roll back, crop."""
        b, _, c = x.shape
        ws = self.window_size
        x = self.norm1(x).view(b, h, w, c)
        pad_r = (ws - w % ws) % ws
        pad_b = (ws - h % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        windows = window_partition(x, ws).view(-1, ws * ws, c)
        windows = self.attn(windows, mask=mask).view(-1, ws, ws, c)
        x = window_reverse(windows, ws, hp, wp)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        return x[:, :h, :w, :].reshape(b, h * w, c)


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat + linear: halves the resolution, doubles the channels."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return onednn.linear(self.norm(x.view(b, -1, 4 * c)), self.reduction)


class BasicLayer(nn.Module):
    """One Swin stage: ``depth`` blocks alternating regular and shifted windows, then merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 qkv_bias: bool, drop_path: list[float], downsample: bool):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else self.shift_size,
                                 mlp_ratio, qkv_bias, drop_path[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def shift_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(nW, ws*ws, ws*ws) additive mask keeping attention inside the regions a shift brought together."""
        ws, s = self.window_size, self.shift_size
        hp, wp = h + (ws - h % ws) % ws, w + (ws - w % ws) % ws  # no negative floor division (ONNX Div truncates)

        def region(n: int) -> torch.Tensor:
            # the official slices (0, -ws), (-ws, -s), (-s, None) numbered 0, 1, 2; comparisons rather
            # than slice assignment so that an ONNX export with dynamic H, W stays correct at every size
            i = torch.arange(n, device=device)
            return (i >= n - ws).long() + (i >= n - s).long()

        img = (region(hp)[:, None] * 3 + region(wp)[None, :]).float().view(1, hp, wp, 1)
        win = window_partition(img, ws).view(-1, ws * ws)
        diff = win.unsqueeze(1) - win.unsqueeze(2)
        return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)

    def forward(self, x: torch.Tensor, h: int, w: int):
        mask = self.shift_mask(h, w, x.device).to(x.dtype)
        for blk in self.blocks:
            x = blk(x, h, w, mask)
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (input padded to the patch size) + LayerNorm."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        p = self.patch_size
        x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        x = self.proj(x)  # (B, C, H/p, W/p)
        if self.norm is not None:
            b, c, hh, ww = x.shape
            x = self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).view(b, c, hh, ww)
        return x


class SwinTransformer(nn.Module):
    """Swin T/S/B/L returning ``res2``..``res5`` (normalised by ``norm0``..``norm3``)."""

    def __init__(self, pretrain_img_size: int = 224, patch_size: int = 4, embed_dim: int = 96,
                 depths: tuple[int, ...] = (2, 2, 6, 2), num_heads: tuple[int, ...] = (3, 6, 12, 24),
                 window_size: int = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.3, ape: bool = False, patch_norm: bool = True):
        super().__init__()
        self.num_layers = len(depths)
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim, patch_norm)
        self.ape = ape
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        n = sum(depths)  # stochastic depth grows linearly over all blocks (as torch.linspace)
        dpr = [drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        self.layers = nn.ModuleList()
        self.num_features = [int(embed_dim * 2**i) for i in range(self.num_layers)]
        for i in range(self.num_layers):
            self.layers.append(BasicLayer(
                dim=self.num_features[i], depth=depths[i], num_heads=num_heads[i], window_size=window_size,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                downsample=i < self.num_layers - 1,
            ))
        for i in range(self.num_layers):
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self.stage_names = [f"res{i + 2}" for i in range(self.num_layers)]
        self.out_channels = {n: c for n, c in zip(self.stage_names, self.num_features)}
        self.out_strides = {n: patch_size * 2**i for i, n in enumerate(self.stage_names)}
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        if self.ape:
            x = x + F.interpolate(self.absolute_pos_embed, size=(h, w), mode="bicubic")
        x = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        out = {}
        for i, layer in enumerate(self.layers):
            x_out, x, h_next, w_next = layer(x, h, w)
            x_out = getattr(self, f"norm{i}")(x_out)
            # (B, C, H, W) over NHWC memory (channels-last): no copy, and what oneDNN convolves fastest
            out[self.stage_names[i]] = x_out.view(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2)
            h, w = h_next, w_next
        return out

    forward = forward_features
