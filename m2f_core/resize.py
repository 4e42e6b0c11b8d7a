"""Memory-bounded upsampling of mask logits to the original image size.

The official post-processing resizes the (Q, h, w) mask logits twice (to the padded input, crop,
to the original size): Q x H x W floats, 4.8 GB for 100 queries on a 12 MP photo. Bilinear
resizing is separable and linear, so the whole chain is one row operator and one column operator:
``out = A_rows @ M @ A_cols^T``. Columns are applied once on the small tensor; rows are produced
in chunks, each output row a weighted sum of at most 4 input rows (one fused ``embedding_bag``).

Chunks are laid out (rows, Q, W): row-major for the consumers, which reduce over queries or
classes per row, so no transposed copy of the large tensor is ever made.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F


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


def _taps(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse form of an (out, in) resize operator: (out, taps) input indices and fp32 weights, where
    taps is the most non-zero weights of any row (2 for a plain bilinear upsampling)."""
    taps = max(1, int((matrix != 0).sum(1).max()))
    _, index = matrix.abs().topk(taps, dim=1)
    return index, torch.gather(matrix, 1, index).float()


def _apply_taps(table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Rows of ``operator @ table`` for a sparse operator: one fused weighted gather (embedding_bag)."""
    taps = index.shape[1]
    return F.embedding_bag(index.reshape(-1), table, offsets=torch.arange(0, index.numel(), taps),
                           per_sample_weights=weight.reshape(-1), mode="sum")


class MaskUpsampler:
    """Rows of the upsampled mask logits, (rows, Q, W), for all queries or a subset."""

    def __init__(self, mask_logits: torch.Tensor, padded_size: tuple[int, int], image_size: tuple[int, int],
                 output_size: tuple[int, int], max_elements: int = 64_000_000):
        q, h, w = mask_logits.shape
        self.output_size = output_size
        self.num_queries = q
        rows = chain_matrix(h, padded_size[0], image_size[0], output_size[0])  # (H, h)
        cols = chain_matrix(w, padded_size[1], image_size[1], output_size[1])  # (W, w)
        self._logits = mask_logits.float()
        self._cols_t = cols.float().T.contiguous()  # (w, W)
        self._col_index, self._col_weight = _taps(cols)  # (W, taps), for single pixels
        self._row_index, self._row_weight = _taps(rows)  # (H, taps)
        # columns applied on the small tensor, per query on first use, stored row-major: (h, Q, W)
        self._by_cols = torch.empty((h, q, output_size[1]), dtype=torch.float32)
        self._done = torch.zeros(q, dtype=torch.bool)
        self.max_elements = max_elements

    @torch.inference_mode()  # the state may have been made in inference mode (Predictor.predict)
    def _ensure_columns(self, queries: torch.Tensor | None) -> None:
        """Resize the columns of the queries not done yet (a large image reads only a few queries)."""
        todo = (~self._done).nonzero().flatten() if queries is None else queries[~self._done[queries]].unique()
        if len(todo) == 0:
            return
        if len(todo) == self.num_queries:
            torch.matmul(self._logits.permute(1, 0, 2), self._cols_t, out=self._by_cols)
        else:
            self._by_cols[:, todo] = self._logits[todo].permute(1, 0, 2).matmul(self._cols_t)
        self._done[todo] = True

    def _table(self, queries: torch.Tensor | None) -> torch.Tensor:
        self._ensure_columns(queries)
        src = self._by_cols if queries is None else self._by_cols[:, queries]
        return src.reshape(src.shape[0], -1)  # (h, Q' * W)

    def rows(self, r0: int, r1: int, queries: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of output rows [r0, r1): (r1 - r0, Q', W)."""
        return self._rows(self._table(queries), r0, r1)

    def _rows(self, table: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        out = _apply_taps(table, self._row_index[r0:r1], self._row_weight[r0:r1])
        return out.view(r1 - r0, -1, self.output_size[1])

    def chunks(self, queries: torch.Tensor | None = None,
               max_elements: int | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(r0, r1, logits (r1 - r0, Q', W)) over all output rows, each chunk within ``max_elements``
        (default: the upsampler's)."""
        table = self._table(queries)
        n = self.num_queries if queries is None else len(queries)
        step = max(1, (max_elements or self.max_elements) // max(1, n * self.output_size[1]))
        for r0 in range(0, self.output_size[0], step):
            r1 = min(r0 + step, self.output_size[0])
            yield r0, r1, self._rows(table, r0, r1)

    def full(self, queries: torch.Tensor | None = None) -> torch.Tensor:
        """(Q', H, W) logits (materialised: use for a few queries)."""
        return torch.cat([c for _, _, c in self.chunks(queries)], dim=0).permute(1, 0, 2)

    def at(self, x: int, y: int) -> torch.Tensor:
        """(Q,) logits of one output pixel."""
        return self.rows(y, y + 1)[0, :, x]

    def pixels(self, ys: torch.Tensor, xs: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        """(N, Q') logits at the output pixels (ys[i], xs[i]), for a few scattered pixels."""
        logits = self._logits if queries is None else self._logits[queries]  # (Q', h, w)
        ri, rw = self._row_index[ys], self._row_weight[ys]  # (N, row taps)
        ci, cw = self._col_index[xs], self._col_weight[xs]  # (N, column taps)
        # columns then rows, as ``_ensure_columns`` and ``_rows`` (equal up to fp32 rounding)
        by_cols = logits[:, ri, ci[:, 0:1]] * cw[:, 0:1]  # (Q', N, row taps)
        for t in range(1, ci.shape[1]):
            by_cols += logits[:, ri, ci[:, t:t + 1]] * cw[:, t:t + 1]
        out = by_cols[..., 0] * rw[:, 0]
        for t in range(1, ri.shape[1]):
            out += by_cols[..., t] * rw[:, t]
        return out.T  # (N, Q')
