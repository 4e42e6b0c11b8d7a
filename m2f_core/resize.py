"""Memory-bounded upsampling of mask logits to the original image size.

The official post-processing resizes the (Q, h, w) mask logits twice (to the padded input, crop,
to the original size): Q x H x W floats, 4.8 GB for 100 queries on a 12 MP photo. Bilinear
resizing is separable and linear, so the whole chain is one row operator and one column operator:
``out = A_rows @ M @ A_cols^T``. Rows are produced in chunks, so memory stays bounded; each output
row mixes at most 4 input rows, so a chunk costs a few gathers, not a dense matmul.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def bilinear_matrix(in_size: int, out_size: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(out, in) weights of ``F.interpolate(mode="bilinear", align_corners=False)`` along one axis."""
    scale = in_size / out_size
    dst = torch.arange(out_size, dtype=torch.float64)
    src = ((dst + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    lam = src - i0.double()
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    m[torch.arange(out_size), i0] += 1 - lam
    m[torch.arange(out_size), i1] += lam
    return m.to(dtype)


def chain_matrix(mask_size: int, padded_size: int, image_size: int, output_size: int) -> torch.Tensor:
    """(output, mask) operator of: resize to padded input, crop to the image, resize to the output."""
    up = bilinear_matrix(mask_size, padded_size)[:image_size]
    if image_size != output_size:
        up = bilinear_matrix(image_size, output_size) @ up
    return up


class MaskUpsampler:
    """Yields (row_start, row_end, logits chunk (Q, rows, W)) of the upsampled mask logits."""

    def __init__(self, mask_logits: torch.Tensor, padded_size: tuple[int, int], image_size: tuple[int, int],
                 output_size: tuple[int, int], max_elements: int = 64_000_000):
        q, h, w = mask_logits.shape
        self.output_size = output_size
        rows = chain_matrix(h, padded_size[0], image_size[0], output_size[0])  # (H, h)
        cols = chain_matrix(w, padded_size[1], image_size[1], output_size[1])  # (W, w)
        # columns first, on the small tensor: (Q, h, w) @ (w, W) -> (Q, h, W)
        self._by_cols = mask_logits.double().matmul(cols.T).float()
        # each output row mixes <= 4 input rows: keep (H, 4) indices and weights
        taps = min(4, h)
        weights, index = rows.abs().topk(taps, dim=1)
        self._row_index = index
        self._row_weight = torch.gather(rows, 1, index).float()
        self.num_queries = q
        self.chunk_rows = max(1, max_elements // max(1, q * output_size[1]))

    def rows(self, r0: int, r1: int, queries: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of output rows [r0, r1) for all (or the given) queries: (Q', r1 - r0, W)."""
        src = self._by_cols if queries is None else self._by_cols[queries]
        idx, wgt = self._row_index[r0:r1], self._row_weight[r0:r1]
        out = src.index_select(1, idx[:, 0]).mul_(wgt[:, 0].view(1, -1, 1))
        for t in range(1, idx.shape[1]):
            out.addcmul_(src.index_select(1, idx[:, t]), wgt[:, t].view(1, -1, 1))
        return out

    def chunks(self, queries: torch.Tensor | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        n = self.num_queries if queries is None else len(queries)
        step = max(1, self.chunk_rows * self.num_queries // max(1, n))
        for r0 in range(0, self.output_size[0], step):
            r1 = min(r0 + step, self.output_size[0])
            yield r0, r1, self.rows(r0, r1, queries)

    def full(self, queries: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([c for _, _, c in self.chunks(queries)], dim=1)

    def at(self, x: int, y: int) -> torch.Tensor:
        """(Q,) logits of one output pixel."""
        return self.rows(y, y + 1)[:, 0, x]
