"""Matcher and losses (``m2f_core.matcher``, ``m2f_core.criterion``, ``m2f_core.point_sampling``).

* The matcher's assignment equals a brute-force minimum over all assignments (itertools.permutations)
  with costs written out pair by pair here, and equals ``transformers``' ``Mask2FormerHungarianMatcher``.
* Every loss term, aux terms included, equals ``transformers``' ``Mask2FormerLoss``. Both implementations
  draw their random points with ``torch.rand`` in the official order (per image one (1, P, 2) draw in the
  matcher; per layer (M, 3P, 2) candidates then (M, P/4, 2) random points in the mask loss), so the
  comparison simply seeds torch identically before each call: no monkeypatching is needed.
* Gradients, target-free images, importance sampling on a hand case, num_masks averaging under
  torch.distributed (gloo, world size 1, plus a simulated 2-worker all_reduce), autocast, errors.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from m2f_core.config import BackboneConfig, Mask2FormerConfig
from m2f_core.criterion import SetCriterion, build_criterion
from m2f_core.matcher import HungarianMatcher
from m2f_core.point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
    sample_binary_masks,
)

hf_m2f = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")


# ------------------------------------------------------------------------------------------------
# helpers


def _outputs(batch: int, queries: int, num_classes: int, mask_hw: tuple[int, int], num_aux: int = 0,
             seed: int = 0, requires_grad: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)

    def one() -> dict:
        logits = torch.randn(batch, queries, num_classes + 1, generator=g) * 2
        masks = torch.randn(batch, queries, *mask_hw, generator=g) * 4
        return {"pred_logits": logits.requires_grad_(requires_grad), "pred_masks": masks.requires_grad_(requires_grad)}

    out = one()
    out["aux_outputs"] = [one() for _ in range(num_aux)]
    return out


def _targets(counts: list[int], num_classes: int, hw: tuple[int, int] | list[tuple[int, int]], seed: int = 0,
             as_bool: bool = True) -> list[dict]:
    g = torch.Generator().manual_seed(1000 + seed)
    sizes = hw if isinstance(hw, list) else [hw] * len(counts)
    targets = []
    for n, (h, w) in zip(counts, sizes):
        # blobby masks: a coarse random map upsampled, so masks have regions and boundaries
        coarse = torch.rand(n, 1, 4, 6, generator=g)
        masks = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[:, 0] > 0.5
        labels = torch.randint(0, num_classes, (n,), generator=g)
        targets.append({"labels": labels, "masks": masks if as_bool else masks.float()})
    return targets


def _hf_matcher(m: HungarianMatcher):
    return hf_m2f.Mask2FormerHungarianMatcher(cost_class=m.cost_class, cost_mask=m.cost_mask,
                                              cost_dice=m.cost_dice, num_points=m.num_points)


def _hf_loss(num_classes: int, crit: SetCriterion):
    from transformers import Mask2FormerConfig as HFConfig

    cfg = HFConfig(num_labels=num_classes, no_object_weight=crit.eos_coef, class_weight=crit.matcher.cost_class,
                   mask_weight=crit.matcher.cost_mask, dice_weight=crit.matcher.cost_dice,
                   train_num_points=crit.num_points, oversample_ratio=crit.oversample_ratio,
                   importance_sample_ratio=crit.importance_sample_ratio)
    weights = {"loss_cross_entropy": cfg.class_weight, "loss_mask": cfg.mask_weight, "loss_dice": cfg.dice_weight}
    return hf_m2f.Mask2FormerLoss(cfg, weights), weights


def _hf_inputs(outputs: dict, targets: list[dict]) -> dict:
    return {
        "masks_queries_logits": outputs["pred_masks"],
        "class_queries_logits": outputs["pred_logits"],
        "mask_labels": [t["masks"].float() for t in targets],
        "class_labels": [t["labels"] for t in targets],
        "auxiliary_predictions": [{"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]}
                                  for a in outputs["aux_outputs"]] or None,
    }


def _hf_key(key: str) -> str:
    return key.replace("loss_ce", "loss_cross_entropy")


def _small_criterion(num_classes: int, num_points: int = 12544, **kw) -> SetCriterion:
    weights = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    weights.update({f"{k}_{i}": v for i in range(9) for k, v in list(weights.items())[:3]})
    return SetCriterion(num_classes, HungarianMatcher(2.0, 5.0, 5.0, num_points), weights, num_points=num_points,
                        **kw)


# ------------------------------------------------------------------------------------------------
# point sampling


def test_point_sample_hand_values():
    # 2x2 map, align_corners=False: pixel centres at 1/4 and 3/4; points are (x, y); outside reads zeros
    m = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    pts = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.5, 0.5], [0.5, 0.25], [0.0, 0.25]]])
    got = point_sample(m, pts)
    assert got.shape == (1, 1, 6)
    torch.testing.assert_close(got[0, 0], torch.tensor([0.0, 1.0, 2.0, 1.5, 0.5, 0.0]))
    # a point reads the same place on a 4x finer map of the same picture (what lets 1/4-scale
    # predictions and full-resolution targets share normalised coordinates)
    fine = F.interpolate(m, scale_factor=4, mode="nearest")  # (1, 1, 8, 8)
    torch.testing.assert_close(point_sample(fine, torch.tensor([[[0.3, 0.8], [0.7, 0.1]]]))[0, 0],
                               torch.tensor([2.0, 1.0]))


def test_sample_binary_masks_chunks_and_shared_points(monkeypatch):
    masks = torch.rand(7, 20, 30) > 0.5
    shared = torch.rand(1, 50, 2)
    own = torch.rand(7, 50, 2)
    ref_shared = point_sample(masks.float()[:, None], shared.repeat(7, 1, 1))[:, 0]
    ref_own = point_sample(masks.float()[:, None], own)[:, 0]
    monkeypatch.setattr("m2f_core.point_sampling._TARGET_CHUNK_ELEMENTS", 2 * 20 * 30)  # chunks of 2 masks
    torch.testing.assert_close(sample_binary_masks(masks, shared), ref_shared, rtol=0, atol=1e-6)
    torch.testing.assert_close(sample_binary_masks(masks, own), ref_own, rtol=0, atol=1e-6)
    assert sample_binary_masks(masks[:0], own[:0]).shape == (0, 50)


def test_importance_sampling_hand_case():
    # left half of the map is logit 0 (maximally uncertain), right half +20 (certain). Pixel centres of
    # the last zero column are at x = 3.5 / 8, so every point with x < 0.4375 reads exactly 0.
    logits = torch.zeros(2, 1, 6, 8)
    logits[..., 4:] = 20.0
    num_points, oversample, ratio = 64, 3.0, 0.25
    torch.manual_seed(0)
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, num_points, oversample, ratio)
    assert coords.shape == (2, num_points, 2)
    n_unc = int(ratio * num_points)
    # the importance part lies entirely in the uncertain half
    assert (coords[:, :n_unc, 0] < 0.4375).all()
    # replay the random stream: candidates first, then the uniformly random rest
    torch.manual_seed(0)
    candidates = torch.rand(2, int(num_points * oversample), 2)
    rest = torch.rand(2, num_points - n_unc, 2)
    torch.testing.assert_close(coords[:, n_unc:], rest)
    assert (coords[:, n_unc:, 0] > 0.5).any()  # the random part is not restricted to the boundary
    for b in range(2):
        chosen = {tuple(p.tolist()) for p in coords[b, :n_unc]}
        cand = {tuple(p.tolist()) for p in candidates[b]}
        assert chosen <= cand and len(chosen) == n_unc


def test_importance_sampling_keeps_the_most_uncertain_candidates():
    torch.manual_seed(3)
    logits = torch.randn(3, 1, 10, 12) * 5
    num_points, oversample, ratio = 40, 4.0, 0.75
    torch.manual_seed(7)
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, num_points, oversample, ratio)
    torch.manual_seed(7)
    candidates = torch.rand(3, int(num_points * oversample), 2)
    n_unc = int(ratio * num_points)
    cand_abs = point_sample(logits, candidates)[:, 0].abs()  # (3, S)
    for b in range(3):
        chosen = torch.tensor([[(candidates[b] == p).all(-1).nonzero().item() for p in coords[b, :n_unc]]])[0]
        rejected = torch.ones(candidates.shape[1], dtype=torch.bool)
        rejected[chosen] = False
        assert cand_abs[b, chosen].max() <= cand_abs[b, rejected].min()


def test_uncertainty_rejects_class_specific_logits():
    with pytest.raises(ValueError, match="class-agnostic"):
        calculate_uncertainty(torch.zeros(2, 3, 5))


# ------------------------------------------------------------------------------------------------
# matcher


def _brute_force(pred_logits, pred_masks, labels, masks, coords, weights):
    """Minimum-cost assignment by enumeration, with every pair's cost written out on its own."""
    q, n = pred_logits.shape[0], labels.shape[0]
    prob = pred_logits.double().softmax(-1)
    grid = (2 * coords - 1)[:, :, None].double()  # (1, P, 1, 2)
    out_pts = F.grid_sample(pred_masks.double()[:, None], grid.expand(q, -1, -1, -1), align_corners=False)[:, 0, :, 0]
    tgt_pts = F.grid_sample(masks.double()[:, None], grid.expand(n, -1, -1, -1), align_corners=False)[:, 0, :, 0]
    cost = torch.zeros(q, n, dtype=torch.float64)
    for i in range(q):
        for j in range(n):
            bce = F.binary_cross_entropy_with_logits(out_pts[i], tgt_pts[j])
            p = out_pts[i].sigmoid()
            dice = 1 - (2 * (p * tgt_pts[j]).sum() + 1) / (p.sum() + tgt_pts[j].sum() + 1)
            cost[i, j] = weights[0] * -prob[i, labels[j]] + weights[1] * bce + weights[2] * dice
    best, best_pairs = float("inf"), None
    if n <= q:
        for perm in itertools.permutations(range(q), n):  # query perm[j] takes target j
            total = sum(cost[perm[j], j].item() for j in range(n))
            if total < best:
                best, best_pairs = total, {(perm[j], j) for j in range(n)}
    else:
        for perm in itertools.permutations(range(n), q):  # query i takes target perm[i]
            total = sum(cost[i, perm[i]].item() for i in range(q))
            if total < best:
                best, best_pairs = total, {(i, perm[i]) for i in range(q)}
    return best, best_pairs, cost


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("queries,counts", [(5, [3, 0, 2]), (3, [4, 1, 3])])
def test_matcher_equals_brute_force(seed, queries, counts):
    num_classes, num_points = 4, 300
    outputs = _outputs(len(counts), queries, num_classes, (8, 12), seed=seed)
    targets = _targets(counts, num_classes, (32, 48), seed=seed)
    matcher = HungarianMatcher(2.0, 5.0, 5.0, num_points)
    torch.manual_seed(seed)
    indices = matcher(outputs, targets)
    torch.manual_seed(seed)
    for b, (t, (rows, cols)) in enumerate(zip(targets, indices)):
        coords = torch.rand(1, num_points, 2)  # the matcher's per-image draw, replayed
        assert rows.dtype == torch.int64 and cols.dtype == torch.int64
        n = len(t["labels"])
        assert len(rows) == len(cols) == min(queries, n)
        if n == 0:
            continue
        assert torch.equal(rows, rows.sort().values)
        best, pairs, cost = _brute_force(outputs["pred_logits"][b], outputs["pred_masks"][b], t["labels"],
                                         t["masks"], coords, (2.0, 5.0, 5.0))
        assert {(int(i), int(j)) for i, j in zip(rows, cols)} == pairs
        assert cost[rows, cols].sum().item() == pytest.approx(best, abs=1e-9)
        # our float32 cost matrix agrees with the pairwise float64 one
        ours = matcher.cost_matrix(outputs["pred_logits"][b], outputs["pred_masks"][b], t["labels"], t["masks"], coords)
        torch.testing.assert_close(ours.double(), cost, rtol=0, atol=2e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matcher_equals_transformers(seed):
    num_classes, queries = 6, 12
    counts = [4, 0, 7, 1]
    outputs = _outputs(len(counts), queries, num_classes, (16, 20), seed=seed)
    targets = _targets(counts, num_classes, (64, 80), seed=seed)
    ours_m = HungarianMatcher(2.0, 5.0, 5.0, 2000)
    torch.manual_seed(seed)
    ours = ours_m(outputs, targets)
    torch.manual_seed(seed)
    ref = _hf_matcher(ours_m)(outputs["pred_masks"], outputs["pred_logits"], [t["masks"].float() for t in targets],
                              [t["labels"] for t in targets])
    assert len(ours) == len(ref)
    for (r0, c0), (r1, c1) in zip(ours, ref):
        assert torch.equal(r0, r1) and torch.equal(c0, c1)
    # both consumed the same amount of randomness
    torch.manual_seed(seed)
    ours_m(outputs, targets)
    after_ours = torch.rand(1)
    torch.manual_seed(seed)
    _hf_matcher(ours_m)(outputs["pred_masks"], outputs["pred_logits"], [t["masks"].float() for t in targets],
                        [t["labels"] for t in targets])
    assert torch.equal(after_ours, torch.rand(1))


def test_matcher_costs_in_float32_under_autocast():
    outputs = _outputs(2, 6, 3, (8, 8), seed=5)
    low = {k: v.bfloat16() for k, v in outputs.items() if k != "aux_outputs"}
    targets = _targets([3, 2], 3, (32, 32), seed=5)
    matcher = HungarianMatcher(num_points=500)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = matcher(low, targets)
        cost = matcher.cost_matrix(low["pred_logits"][0], low["pred_masks"][0], targets[0]["labels"],
                                   targets[0]["masks"], torch.rand(1, 500, 2))
    assert cost.dtype == torch.float32
    torch.manual_seed(0)
    ref = matcher({k: v.float() for k, v in low.items()}, targets)
    for (r0, c0), (r1, c1) in zip(got, ref):
        assert torch.equal(r0, r1) and torch.equal(c0, c1)


def test_matcher_rejects_non_finite_costs():
    outputs = _outputs(1, 4, 3, (8, 8))
    outputs["pred_masks"][0, 2] = float("nan")
    with pytest.raises(FloatingPointError, match=r"image 0 for queries \[2\]"):
        HungarianMatcher(num_points=100)(outputs, _targets([2], 3, (16, 16)))


def test_matcher_rejects_bad_inputs():
    with pytest.raises(ValueError, match="all matching costs"):
        HungarianMatcher(0, 0, 0)
    outputs = _outputs(1, 4, 3, (8, 8))
    bad = [{"labels": torch.tensor([0, 1]), "masks": torch.zeros(3, 16, 16, dtype=torch.bool)}]
    with pytest.raises(ValueError, match="2 labels but 3 masks"):
        HungarianMatcher(num_points=10)(outputs, bad)


# ------------------------------------------------------------------------------------------------
# losses against transformers


@pytest.mark.parametrize(
    "case",
    [
        # counts per image, queries, num_points, oversample, importance, target sizes, aux layers
        dict(counts=[3, 2], queries=10, num_points=12544, oversample=3.0, importance=0.75, hw=(64, 96), aux=9),
        dict(counts=[4, 0, 1], queries=8, num_points=700, oversample=2.0, importance=0.5, hw=(32, 48), aux=2),
        dict(counts=[6, 2], queries=5, num_points=500, oversample=3.0, importance=1.0, hw=(32, 32), aux=1),
        dict(counts=[2, 3], queries=7, num_points=400, oversample=3.0, importance=0.75,
             hw=[(40, 56), (32, 64)], aux=1),  # different target sizes: zero-padded to the largest
    ],
    ids=["defaults-9aux", "empty-image", "more-targets-than-queries", "padded-targets"],
)
def test_losses_equal_transformers(case):
    num_classes = 5
    outputs = _outputs(len(case["counts"]), case["queries"], num_classes, (16, 24), num_aux=case["aux"], seed=11)
    targets = _targets(case["counts"], num_classes, case["hw"], seed=11)
    crit = _small_criterion(num_classes, case["num_points"], oversample_ratio=case["oversample"],
                            importance_sample_ratio=case["importance"])
    hf_loss, hf_weights = _hf_loss(num_classes, crit)
    torch.manual_seed(123)
    ours = crit(outputs, targets)
    torch.manual_seed(123)
    ref = hf_loss(**_hf_inputs(outputs, targets))
    expected_keys = {"loss_ce", "loss_mask", "loss_dice"}
    expected_keys |= {f"{k}_{i}" for k in list(expected_keys) for i in range(case["aux"])}
    assert set(ours) == expected_keys
    assert {_hf_key(k) for k in ours} == set(ref)
    for key, value in ours.items():
        torch.testing.assert_close(value, ref[_hf_key(key)], rtol=1e-5, atol=1e-6, msg=key)
    # weighted total = transformers' weighting (by loss name, aux included)
    hf_total = sum(v * next(w for n, w in hf_weights.items() if n in k) for k, v in ref.items())
    torch.testing.assert_close(crit.weighted_total(ours), hf_total, rtol=1e-5, atol=1e-5)


def test_float_and_bool_targets_give_the_same_losses():
    outputs = _outputs(2, 6, 3, (8, 12), num_aux=1, seed=2)
    crit = _small_criterion(3, 300)
    torch.manual_seed(0)
    a = crit(outputs, _targets([2, 3], 3, (32, 48), seed=2, as_bool=True))
    torch.manual_seed(0)
    b = crit(outputs, _targets([2, 3], 3, (32, 48), seed=2, as_bool=False))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# behaviour


def test_losses_in_float32_under_autocast():
    # bf16 network outputs: the losses equal those of the same values in float32, and are float32
    outputs = _outputs(2, 6, 3, (8, 12), num_aux=1, seed=8)
    low = {"pred_logits": outputs["pred_logits"].bfloat16(), "pred_masks": outputs["pred_masks"].bfloat16(),
           "aux_outputs": [{k: v.bfloat16() for k, v in a.items()} for a in outputs["aux_outputs"]]}
    high = {"pred_logits": low["pred_logits"].float(), "pred_masks": low["pred_masks"].float(),
            "aux_outputs": [{k: v.float() for k, v in a.items()} for a in low["aux_outputs"]]}
    targets = _targets([2, 3], 3, (32, 48), seed=8)
    crit = _small_criterion(3, 300)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = crit(low, targets)
    torch.manual_seed(0)
    ref = crit(high, targets)
    for k in ref:
        assert got[k].dtype == torch.float32
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)


def test_gradients_reach_every_layer():
    outputs = _outputs(2, 6, 4, (8, 12), num_aux=9, seed=4, requires_grad=True)
    targets = _targets([3, 1], 4, (32, 48), seed=4)
    crit = _small_criterion(4, 500)
    losses = crit(outputs, targets)
    assert len(losses) == 30
    total = crit.weighted_total(losses)
    total.backward()
    for layer in [outputs, *outputs["aux_outputs"]]:
        for name in ("pred_logits", "pred_masks"):
            grad = layer[name].grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    # mask gradients only on matched queries (3 + 1), class gradients on all queries
    matched = (outputs["pred_masks"].grad.abs().flatten(2).sum(-1) > 0).sum().item()
    assert matched == 4
    assert (outputs["pred_logits"].grad.abs().sum(-1) > 0).all()


def test_target_free_image_gives_only_no_object_ce():
    num_classes = 4
    outputs = _outputs(1, 6, num_classes, (8, 8), num_aux=2, seed=9, requires_grad=True)
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32, dtype=torch.bool)}]
    crit = _small_criterion(num_classes, 200)
    losses = crit(outputs, targets)
    for i, layer in enumerate([outputs, *outputs["aux_outputs"]]):
        suffix = "" if i == 0 else f"_{i - 1}"
        no_object = torch.full((1, 6), num_classes)
        # all queries share the 0.1 weight, so the weighted mean is the plain mean
        expected = F.cross_entropy(layer["pred_logits"].transpose(1, 2), no_object)
        torch.testing.assert_close(losses["loss_ce" + suffix], expected)
        assert losses["loss_mask" + suffix].item() == 0 and losses["loss_dice" + suffix].item() == 0
    crit.weighted_total(losses).backward()
    assert outputs["pred_masks"].grad is not None and outputs["pred_masks"].grad.abs().sum() == 0


def test_target_free_image_in_a_batch_is_all_no_object():
    num_classes = 4
    outputs = _outputs(2, 6, num_classes, (8, 8), seed=10)
    targets = _targets([0, 2], num_classes, (32, 32), seed=10)
    crit = _small_criterion(num_classes, 200)
    torch.manual_seed(0)
    losses = crit(outputs, targets)
    torch.manual_seed(0)
    rows, cols = crit.matcher(outputs, targets)[1]
    target_classes = torch.full((2, 6), num_classes)
    target_classes[1, rows] = targets[1]["labels"][cols]
    weight = torch.ones(num_classes + 1)
    weight[-1] = 0.1
    nll = F.cross_entropy(outputs["pred_logits"].transpose(1, 2), target_classes, reduction="none")  # (2, 6)
    w = weight[target_classes]
    torch.testing.assert_close(losses["loss_ce"], (w * nll).sum() / w.sum())


def test_num_masks_distributed_world_size_one_equals_local(tmp_path, monkeypatch):
    import torch.distributed as dist

    outputs = _outputs(2, 6, 3, (8, 12), num_aux=1, seed=6)
    targets = _targets([2, 3], 3, (32, 48), seed=6)
    crit = _small_criterion(3, 300)
    torch.manual_seed(0)
    local = crit(outputs, targets)
    assert crit.get_num_masks(targets, torch.device("cpu")) == 5.0
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        distributed = crit(outputs, targets)
        for k in local:
            torch.testing.assert_close(distributed[k], local[k], rtol=0, atol=0)
        # a simulated second worker holding 9 targets: (5 + 9) / 2 masks per worker
        real_all_reduce = dist.all_reduce

        def fake_all_reduce(tensor, *args, **kwargs):
            real_all_reduce(tensor, *args, **kwargs)
            tensor += 9
        monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
        monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
        assert crit.get_num_masks(targets, torch.device("cpu")) == 7.0
        torch.manual_seed(0)
        scaled = crit(outputs, targets)
        for k in ("loss_mask", "loss_dice", "loss_mask_0", "loss_dice_0"):
            torch.testing.assert_close(scaled[k], local[k] * 5 / 7)
        torch.testing.assert_close(scaled["loss_ce"], local["loss_ce"])  # CE is a weighted mean, not / num_masks
        # clamp: no target anywhere still divides by 1
        monkeypatch.setattr(dist, "all_reduce", real_all_reduce)
        empty = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 4, 4)}] * 2
        assert crit.get_num_masks(empty, torch.device("cpu")) == 1.0
    finally:
        monkeypatch.undo()
        dist.destroy_process_group()


def test_criterion_rejects_bad_targets():
    crit = _small_criterion(3, 50)
    outputs = _outputs(1, 4, 3, (8, 8))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        crit(outputs, [{"labels": torch.tensor([3]), "masks": torch.ones(1, 16, 16)}])
    with pytest.raises(ValueError, match="2 targets for a batch of 1"):
        crit(outputs, _targets([1, 1], 3, (16, 16)))
    with pytest.raises(ValueError, match="masks"):
        crit(outputs, [{"labels": torch.tensor([1]), "masks": torch.ones(16, 16)}])
    with pytest.raises(ValueError, match="unknown losses"):
        SetCriterion(3, HungarianMatcher(), {}, losses=("labels", "boxes"))


def test_build_criterion_from_config():
    config = Mask2FormerConfig(class_names=["a", "b", "c"], class_weight=2.0, mask_weight=5.0, dice_weight=5.0)
    crit = build_criterion(config)
    assert crit.num_classes == 3 and crit.eos_coef == 0.1
    assert crit.empty_weight.tolist() == pytest.approx([1, 1, 1, 0.1])
    assert (crit.matcher.cost_class, crit.matcher.cost_mask, crit.matcher.cost_dice) == (2.0, 5.0, 5.0)
    assert crit.matcher.num_points == crit.num_points == 12544
    assert (crit.oversample_ratio, crit.importance_sample_ratio) == (3.0, 0.75)
    expected = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    expected.update({f"{k}_{i}": v for i in range(9) for k, v in list(expected.items())[:3]})
    assert crit.weight_dict == expected
    flat = build_criterion(config.replace(deep_supervision=False))
    assert set(flat.weight_dict) == {"loss_ce", "loss_mask", "loss_dice"}
    outputs = _outputs(1, 4, 3, (8, 8), num_aux=2)
    flat.matcher.num_points = flat.num_points = 100
    assert set(flat(outputs, _targets([1], 3, (16, 16)))) == {"loss_ce", "loss_mask", "loss_dice"}
    # weighting drops unknown terms (official rule) and multiplies the rest
    w = crit.weighted_losses({"loss_ce": torch.tensor(1.0), "loss_mask_3": torch.tensor(2.0), "x": torch.tensor(1.0)})
    assert {k: v.item() for k, v in w.items()} == {"loss_ce": 2.0, "loss_mask_3": 10.0}


def test_end_to_end_with_the_model():
    from m2f_core import build_model

    config = Mask2FormerConfig(
        class_names=[f"c{i}" for i in range(4)],
        backbone=BackboneConfig(type="resnet", stage_blocks=(1, 1, 1, 1), res2_out_channels=64, stem_out_channels=32),
        conv_dim=32, mask_dim=32, hidden_dim=32, nheads=4, enc_layers=1, dim_feedforward=32, enc_dim_feedforward=32,
        num_queries=8, train_num_points=256,
    )
    torch.manual_seed(0)
    model = build_model(config).train()
    crit = build_criterion(config)
    images = torch.randn(2, 3, 64, 96)
    outputs = model(images)
    targets = _targets([3, 0], 4, (64, 96), seed=1)  # masks at the padded input resolution
    losses = crit(outputs, targets)
    assert set(losses) == set(crit.weight_dict)  # 10 predictions -> suffixes _0 .. _8
    crit.weighted_total(losses).backward()
    head = model.sem_seg_head.predictor
    for p in (head.class_embed.weight, head.query_feat.weight, next(head.mask_embed.parameters())):
        assert p.grad is not None and p.grad.abs().sum() > 0
