"""The raw outputs of one image and the three task views derived from them, each on demand and cached.

A ``Prediction`` (made by ``Predictor.predict``) keeps the network's class logits and low-resolution
mask logits. Panoptic, instance and semantic results follow the official post-processing; each is
computed when first asked for and cached, so switching task never runs the network again. The views
read only the queries that can matter: the probabilities of the *active* queries are upsampled once,
and every other query is bounded by its class probability times its largest mask probability
(bilinear resizing is a convex combination), so semantic labels and uncertainty are rescored
exactly only where that bound is not decisive.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .config import Mask2FormerConfig
from .resize import MaskUpsampler
from .structures import Candidate, InstanceResult, PanopticResult, Segment, SemanticResult


def score_order(scores: torch.Tensor, queries: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Indices by descending score; ties broken by query then class, so the order is deterministic."""
    return np.lexsort((labels.numpy(), queries.numpy(), -scores.double().numpy()))


class Prediction:
    """Raw outputs of one image and the three task views derived from them (each cached)."""

    def __init__(self, image: np.ndarray, pred_logits: torch.Tensor, pred_masks: torch.Tensor,
                 padded_size: tuple[int, int], input_size: tuple[int, int], config: Mask2FormerConfig,
                 timings: dict[str, float] | None = None):
        self.image = image  # (H, W, 3) uint8 RGB, upright
        self.pred_logits = pred_logits.float().cpu()  # (Q, K+1)
        self.pred_masks = pred_masks.float().cpu()  # (Q, h/4, w/4) logits on the padded input
        self.padded_size = padded_size
        self.input_size = input_size  # resized image inside the padded input
        self.config = config
        self.timings = dict(timings or {})
        self._cache: dict[tuple, object] = {}
        self._upsampler: MaskUpsampler | None = None

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def class_probs(self) -> torch.Tensor:
        """(Q, K+1) softmax class probabilities (last column: no object)."""
        if "class_probs" not in self._cache:
            self._cache["class_probs"] = F.softmax(self.pred_logits, dim=-1)
        return self._cache["class_probs"]

    @property
    def object_queries(self) -> torch.Tensor:
        """(Q,) bool: queries whose best class is more likely than no-object."""
        probs = self.class_probs
        return probs[:, :-1].max(-1).values > probs[:, -1]

    @property
    def upsampler(self) -> MaskUpsampler:
        if self._upsampler is None:
            self._upsampler = MaskUpsampler(self.pred_masks, self.padded_size, self.input_size, self.size)
        return self._upsampler

    # Above this many elements (active queries x H x W) no probabilities are kept: each view
    # upsamples what it reads, block by block.
    CACHE_ELEMENTS = 48_000_000
    # Row blocks of about this many pixels keep the per-query passes of a view in the CPU cache.
    BLOCK_PIXELS = 1 << 16

    @property
    def max_mask_probs(self) -> torch.Tensor:
        """(Q,) the largest mask probability of each query anywhere at any size: bilinear resizing is
        a convex combination, so it never exceeds the largest low-resolution logit."""
        if "max_mask_probs" not in self._cache:
            self._cache["max_mask_probs"] = self.pred_masks.flatten(1).amax(1).sigmoid()
        return self._cache["max_mask_probs"]

    @property
    def active_queries(self) -> torch.Tensor:
        """Sorted indices of the queries that decide almost every view: those more likely an object
        than not, plus the 16 most confident. The others only matter where a bound says they might."""
        if "active" not in self._cache:
            best = self.class_probs[:, :-1].max(-1).values
            top = best.argsort(descending=True)[:16]
            chosen = self.object_queries.clone()
            chosen[top] = True
            self._cache["active"] = chosen.nonzero().flatten()
        return self._cache["active"]

    def prepare(self) -> Prediction:
        """Upsample the mask probabilities of the active queries once, so that every task view reads
        them instead of upsampling again (the other queries are read only where a bound says so)."""
        h, w = self.size
        queries = self.active_queries
        if "probs" in self._cache or len(queries) * h * w > self.CACHE_ELEMENTS:
            return self
        start = time.perf_counter()
        subset = None if len(queries) == self.pred_masks.shape[0] else queries
        chunks = [c.sigmoid_() for _, _, c in self.upsampler.chunks(subset)]
        self._cache["probs"] = (queries, chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=0))
        self.timings["upsample"] = time.perf_counter() - start
        return self

    @property
    def cached_queries(self) -> torch.Tensor | None:
        """The queries whose probabilities ``prepare`` kept (None: none kept)."""
        cached = self._cache.get("probs")
        return None if cached is None else cached[0]

    def prob_blocks(self, queries: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor, list[int]]]:
        """(r0, r1, probs (rows, C, W), channels): sigmoid mask probabilities of ``queries`` over the
        image in row blocks; ``probs[:, channels[i]]`` is query ``queries[i]``. Read from the cache
        when it holds them all (no copy), else upsampled block by block."""
        h, w = self.size
        cached = self._cache.get("probs")
        step = max(1, self.BLOCK_PIXELS // w)
        if cached is not None:
            position = {int(q): i for i, q in enumerate(cached[0].tolist())}
            if all(int(q) in position for q in queries.tolist()):
                channels = [position[int(q)] for q in queries.tolist()]
                for r0 in range(0, h, step):
                    yield r0, min(r0 + step, h), cached[1][r0:r0 + step], channels
                return
        channels = list(range(len(queries)))
        for r0, r1, logits in self.upsampler.chunks(queries, max_elements=len(queries) * step * w):
            yield r0, r1, logits.sigmoid_(), channels

    def pixel_probs(self, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """(N, Q) mask probabilities of every query at a few scattered pixels."""
        return self.upsampler.pixels(ys, xs).sigmoid_()

    def _cached(self, key: tuple, compute):
        if key not in self._cache:
            start = time.perf_counter()
            self._cache[key] = compute()
            self.timings[key[0]] = time.perf_counter() - start
        return self._cache[key]

    # ---------------------------------------------------------------------------------- panoptic
    def panoptic(self, object_mask_threshold: float | None = None,
                 overlap_threshold: float | None = None) -> PanopticResult:
        """Official panoptic inference at the original size (thresholds default to the config's)."""
        return self._panoptic_cached(object_mask_threshold, overlap_threshold)[0]

    def segment_queries(self, object_mask_threshold: float | None = None,
                        overlap_threshold: float | None = None) -> dict[int, list[int]]:
        """Segment id -> the queries that produced it (several for a merged stuff segment)."""
        return self._panoptic_cached(object_mask_threshold, overlap_threshold)[1]

    def _panoptic_cached(self, object_mask_threshold: float | None, overlap_threshold: float | None):
        t_obj = self.config.object_mask_threshold if object_mask_threshold is None else object_mask_threshold
        t_ovl = self.config.overlap_threshold if overlap_threshold is None else overlap_threshold
        return self._cached(("panoptic", t_obj, t_ovl), lambda: self._panoptic(t_obj, t_ovl))

    def _panoptic(self, object_mask_threshold: float, overlap_threshold: float):
        h, w = self.size
        num_classes = self.pred_logits.shape[-1] - 1
        scores, labels = self.class_probs.max(-1)
        keep = labels.ne(num_classes) & (scores > object_mask_threshold)
        queries = keep.nonzero().flatten()  # only these compete: the others' masks are never read
        if len(queries) == 0:
            return PanopticResult(np.zeros((h, w), np.int32), []), {}
        cur_scores, cur_classes = scores[queries], labels[queries]
        n = len(queries)
        winner = torch.zeros((h, w), dtype=torch.int64)  # index into the kept queries
        winner_own = torch.zeros((h, w), dtype=torch.bool)  # the winner's own mask is >= 0.5 here
        original_area = torch.zeros(n, dtype=torch.int64)
        for r0, r1, probs, channels in self.prob_blocks(queries):  # probs: (rows, C, W)
            # running argmax over the kept queries (first maximum wins ties, as argmax does); each step
            # reads one (rows, W) slice, where a stacked max would copy (rows, n, W) first
            # (block-sized buffers written in place: a fresh tensor per step costs an mmap each)
            best = torch.full((r1 - r0, w), -1.0)
            best_p = torch.zeros((r1 - r0, w))
            ids = torch.zeros((r1 - r0, w), dtype=torch.int64)
            score = torch.empty((r1 - r0, w))
            better = torch.empty((r1 - r0, w), dtype=torch.bool)
            for k, c in enumerate(channels):
                p = probs[:, c]
                original_area[k] += torch.count_nonzero(torch.ge(p, 0.5, out=better))
                torch.mul(p, cur_scores[k], out=score)
                torch.gt(score, best, out=better)
                torch.maximum(best, score, out=best)
                torch.where(better, p, best_p, out=best_p)
                ids.masked_fill_(better, k)
            winner[r0:r1] = ids
            winner_own[r0:r1] = best_p >= 0.5
        mask_area = torch.bincount(winner.flatten(), minlength=n)
        final_area = torch.bincount(winner[winner_own], minlength=n)
        lut = torch.zeros(n, dtype=torch.int32)
        segments: list[Segment] = []
        seg_queries: dict[int, list[int]] = {}
        stuff_ids: dict[int, int] = {}
        is_thing = self.config.is_thing
        for k in range(n):
            pred_class = int(cur_classes[k])
            isthing = bool(is_thing[pred_class])
            if mask_area[k] == 0 or original_area[k] == 0 or final_area[k] == 0:
                continue
            if float(mask_area[k]) / float(original_area[k]) < overlap_threshold:
                continue
            if not isthing and pred_class in stuff_ids:
                lut[k] = stuff_ids[pred_class]
                seg_queries[stuff_ids[pred_class]].append(int(queries[k]))
                continue
            seg_id = len(segments) + 1
            if not isthing:
                stuff_ids[pred_class] = seg_id
            lut[k] = seg_id
            seg_queries[seg_id] = [int(queries[k])]
            segments.append(Segment(id=seg_id, category_id=pred_class, isthing=isthing, score=float(cur_scores[k])))
        segment_map = torch.where(winner_own, lut[winner], torch.zeros((), dtype=torch.int32))
        return PanopticResult(segment_map.numpy(), segments).update_stats(), seg_queries

    # ---------------------------------------------------------------------------------- instance
    def instance(self, topk: int | None = None, thing_only: bool | None = None) -> InstanceResult:
        """Official instance inference: top-k (query, class) pairs scored with the mask quality.

        ``thing_only`` defaults to True for a panoptic model (its stuff classes are not instances).
        """
        topk = self.config.test_topk_per_image if topk is None else topk
        thing_only = self.config.panoptic_on if thing_only is None else thing_only
        return self._cached(("instance", topk, thing_only), lambda: self._instance(topk, thing_only))

    def _instance(self, topk: int, thing_only: bool) -> InstanceResult:
        h, w = self.size
        scores = self.class_probs[:, :-1]
        num_queries, num_classes = scores.shape
        topk = min(topk, scores.numel())
        scores_per_image, topk_indices = scores.flatten().topk(topk, sorted=False)
        labels = topk_indices % num_classes
        query_idx = topk_indices // num_classes
        if thing_only:
            keep = torch.as_tensor(np.asarray(self.config.is_thing, dtype=bool))[labels]
            scores_per_image, labels, query_idx = scores_per_image[keep], labels[keep], query_idx[keep]
        if len(query_idx) == 0:
            return InstanceResult(np.zeros((0, h, w), bool), np.zeros((0, 4)), np.zeros(0), np.zeros(0))
        unique_q, inverse = torch.unique(query_idx, return_inverse=True)
        u = len(unique_q)
        masks = torch.zeros((u, h, w), dtype=torch.bool)
        prob_sum = torch.zeros(u, dtype=torch.float64)
        counts = torch.zeros(u, dtype=torch.float64)
        # Upsampling is a convex combination of mask logits, so a query with no positive logit has an
        # empty mask (and mask score 0) at any size: only the others are read at full size.
        nonempty = (self.pred_masks[unique_q].flatten(1).amax(1) > 0).nonzero().flatten()
        cached = self.cached_queries
        in_cache = torch.zeros(len(nonempty), dtype=torch.bool)
        if cached is not None:
            in_cache = torch.isin(unique_q[nonempty], cached)
        zero = torch.zeros(())
        for group in (nonempty[in_cache], nonempty[~in_cache]):  # read from the cache / upsampled
            if len(group) == 0:
                continue
            for r0, r1, probs, channels in self.prob_blocks(unique_q[group]):  # (rows, C, W)
                inside = torch.empty((r1 - r0, w))
                for i, c in zip(group.tolist(), channels):
                    p = probs[:, c]
                    binary = masks[i, r0:r1]
                    torch.gt(p, 0.5, out=binary)  # logit > 0
                    prob_sum[i] += float(torch.where(binary, p, zero, out=inside).sum(dtype=torch.float64))
                    counts[i] += int(torch.count_nonzero(binary))
        mask_scores = (prob_sum / (counts + 1e-6)).float()
        final = scores_per_image * mask_scores[inverse]
        order = torch.from_numpy(score_order(final, query_idx, labels))
        rows = inverse[order]
        out_masks = masks[rows].numpy()
        unique_boxes = _mask_boxes(masks)
        return InstanceResult(masks=out_masks, boxes=unique_boxes[rows].numpy(), scores=final[order].numpy(),
                              labels=labels[order].numpy())

    # ---------------------------------------------------------------------------------- semantic
    def semantic(self, with_probs: bool = False) -> SemanticResult:
        """Label map of argmax_k sum_q p(k|q) sigmoid(m_q); ``with_probs`` adds the (K, H, W) scores."""
        return self._cached(("semantic", with_probs), lambda: self._semantic(with_probs))

    # The pruned pass of a view pays off when its bounds decide almost every pixel. Above this share of
    # undecided pixels (on a sample up front, then per row block) the dense computation is cheaper.
    DENSE_SHARE = 1 / 16
    SAMPLE_PIXELS = 1024

    def _semantic(self, with_probs: bool) -> SemanticResult:
        h, w = self.size
        cls = self.class_probs[:, :-1]  # (Q, K)
        num_queries, num_classes = cls.shape
        # Exact pruning, twice, with the bound: query q adds at most p(k|q) x its largest mask
        # probability to class k anywhere. Queries: score only the cached (else the active) ones; the
        # left-out ones add at most ``slack`` to any class, so a pixel whose best class beats the
        # runner-up by more is decided. Classes: score the classes that some kept query predicts plus
        # the heaviest few; a pixel whose best beats the largest left-out class's bound is decided.
        # Undecided pixels are scored again with every query and class. Outputs the bounds cannot
        # prune (an untrained or unsure model: flat class and mask probabilities) take the dense
        # computation, (K, Q) x (Q, pixels) and an argmax, which is then never paid twice.
        if with_probs:
            queries = torch.arange(num_queries)
        else:
            cached = self.cached_queries
            queries = cached if cached is not None else self.active_queries
        left_out = torch.ones(num_queries, dtype=torch.bool)
        left_out[queries] = False
        weighted = cls * self.max_mask_probs[:, None]  # (Q, K)
        dropped = weighted[left_out].sum(0)  # (K,)
        mass = weighted.sum(0)
        order = mass.argsort(descending=True)
        if with_probs:
            kept = num_classes
        else:
            obj = self.object_queries[queries]
            predicted = cls[queries][obj].argmax(1).unique()
            chosen = torch.zeros(num_classes, dtype=torch.bool)
            chosen[predicted] = True
            chosen[order[:4]] = True
            order = torch.cat([order[chosen[order]], order[~chosen[order]]])  # chosen first, by mass
            kept = int(chosen.sum())
        included = order[:kept]
        bound = float(mass[order[kept:]].max()) if kept < num_classes else float("-inf")
        slack = float(dropped.max()) + 1e-6 if bool(left_out.any()) else None  # 1e-6: fp32 rounding of the sums

        def undecided(sem: torch.Tensor) -> torch.Tensor:
            """(..., K', ...) pruned scores over dim -2 -> (...) bool: the pixels the bounds leave open."""
            best, arg = sem.max(-2)
            unsure = best <= bound
            if slack is not None:  # the runner-up plus the most any class gains from the left-out queries
                runner_up = sem.scatter(-2, arg.unsqueeze(-2), float("-inf")).amax(-2)
                unsure |= best <= runner_up + slack
            return unsure

        dense = with_probs or self._mostly_undecided(
            lambda p: undecided((p[:, queries] @ cls[queries][:, included]).T))
        if dense:
            queries, included = torch.arange(num_queries), torch.arange(num_classes)
        cls_t = cls[queries][:, included].T.contiguous()  # (K', Q')
        cls_all_t = cls.T.contiguous()  # (K, Q)
        label_map = torch.zeros((h, w), dtype=torch.int64)
        probs = torch.zeros((num_classes, h, w), dtype=torch.float32) if with_probs else None
        for r0, r1, p, channels in self.prob_blocks(queries):  # p: (rows, C, W)
            if channels != list(range(p.shape[1])):
                p = p[:, channels]
            sem = torch.matmul(cls_t, p)  # (rows, K', W)
            if dense:
                if probs is not None:
                    probs[:, r0:r1] = sem.permute(1, 0, 2)
                label_map[r0:r1] = sem.argmax(1)
                continue
            labels = included[sem.argmax(1)]
            unsure = undecided(sem)
            n_unsure = int(unsure.sum())
            if n_unsure > self.DENSE_SHARE * unsure.numel():  # cheaper to score the block with everything
                every = self.upsampler.rows(r0, r1).sigmoid_()  # (rows, Q, W)
                labels = torch.matmul(cls_all_t, every).argmax(1)
            elif n_unsure:
                rr, cc = unsure.nonzero(as_tuple=True)
                labels[rr, cc] = (self.pixel_probs(rr + r0, cc) @ cls).argmax(1)
            label_map[r0:r1] = labels
        return SemanticResult(label_map.numpy(), None if probs is None else probs.numpy())

    def _mostly_undecided(self, undecided) -> bool:
        """Whether the bounds leave more than ``DENSE_SHARE`` of a fixed pixel sample undecided.

        ``undecided``: (N, Q) mask probabilities of the sample -> (N,) bool. Only the speed depends on
        it: both paths give the exact result.
        """
        h, w = self.size
        n = min(self.SAMPLE_PIXELS, h * w)
        index = torch.randperm(h * w, generator=torch.Generator().manual_seed(0))[:n]
        sample = self.pixel_probs(index // w, index % w)  # (N, Q)
        return float(undecided(sample).float().mean()) > self.DENSE_SHARE

    # ---------------------------------------------------------------------------------- for the app
    def uncertainty(self) -> np.ndarray:
        """(H, W) in [0, 1]: 1 - the best query's class probability x mask probability at each pixel."""
        def compute():
            h, w = self.size
            best_cls = self.class_probs[:, :-1].max(-1).values  # (Q,)
            # Exact pruning: a query scores at most its class probability, so the active (or cached)
            # queries decide almost every pixel; pixels where the best of them is below the best
            # left-out query's class probability are scored with every query.
            cached = self.cached_queries
            top = cached if cached is not None else self.active_queries
            rest = torch.ones(len(best_cls), dtype=torch.bool)
            rest[top] = False
            reach = best_cls * self.max_mask_probs  # the most a query scores anywhere
            bound = float(reach[rest].max()) if bool(rest.any()) else float("-inf")
            out = torch.zeros((h, w), dtype=torch.float32)
            for r0, r1, p, channels in self.prob_blocks(top):  # (rows, C, W)
                best = torch.zeros((r1 - r0, w), dtype=torch.float32)
                for q, c in zip(top.tolist(), channels):
                    torch.maximum(best, p[:, c] * best_cls[q], out=best)
                unsure = best < bound
                if bool(unsure.any()):
                    rr, cc = unsure.nonzero(as_tuple=True)
                    best[rr, cc] = (self.pixel_probs(rr + r0, cc) * best_cls).amax(1)
                out[r0:r1] = 1.0 - best
            return out.numpy()
        return self._cached(("uncertainty",), compute)

    def candidates_at(self, x: int, y: int, k: int = 5) -> list[Candidate]:
        """Queries whose mask covers pixel (x, y) but that the panoptic result dropped, best first."""
        h, w = self.size
        if not (0 <= x < w and 0 <= y < h):
            raise ValueError(f"pixel ({x}, {y}) is outside the {w}x{h} image")
        covering = (self.upsampler.at(int(x), int(y)) > 0).nonzero().flatten().tolist()
        used = {q for qs in self.segment_queries().values() for q in qs}
        dropped = [q for q in covering if q not in used]
        cls = self.class_probs[:, :-1]
        best = cls.max(-1)
        dropped.sort(key=lambda q: -float(best.values[q]))
        dropped = dropped[:k]
        if not dropped:
            return []
        masks = self.upsampler.full(torch.tensor(dropped)) > 0  # (k, H, W)
        return [Candidate(query=q, category_id=int(best.indices[q]), score=float(best.values[q]), mask=m.numpy())
                for q, m in zip(dropped, masks)]

    def top_classes(self, query: int, k: int = 5) -> list[tuple[int, float]]:
        """The k most likely classes of a query (no-object excluded), for a relabel menu."""
        probs = self.class_probs[query, :-1]
        values, indices = probs.topk(min(k, probs.numel()))
        return [(int(i), float(v)) for i, v in zip(indices, values)]


def _mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, 4) xyxy boxes (x1, y1 exclusive) of (N, H, W) bool masks; zeros for empty masks."""
    n, h, w = masks.shape
    rows, cols = masks.any(2), masks.any(1)  # (N, H), (N, W)
    y0 = rows.to(torch.uint8).argmax(1)
    y1 = h - rows.flip(1).to(torch.uint8).argmax(1)
    x0 = cols.to(torch.uint8).argmax(1)
    x1 = w - cols.flip(1).to(torch.uint8).argmax(1)
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    return torch.where(rows.any(1, keepdim=True), boxes, 0.0)
