"""Predictor and Prediction: official post-processing, memory-bounded, cached, on odd images.

Synthetic network outputs with known answers drive the post-processing tests; a small random
model drives the end-to-end tests (its answers are meaningless, its plumbing is not).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from reference.postprocess import instance_inference, panoptic_inference, resize_mask_logits, semantic_inference

from m2f_core import build_model
from m2f_core.config import BackboneConfig, Mask2FormerConfig
from m2f_core.prediction import Prediction
from m2f_core.predictor import Predictor, resize_shortest_edge_size
from m2f_core.resize import MaskUpsampler

NAMES = ["disc", "box", "sky", "grass"]
IS_THING = [True, True, False, False]


def small_config(**kw) -> Mask2FormerConfig:
    base = dict(
        name="test", class_names=NAMES, is_thing=IS_THING,
        backbone=BackboneConfig(type="resnet", stage_blocks=(1, 1, 1, 1), res2_out_channels=64, stem_out_channels=32),
        conv_dim=64, mask_dim=64, hidden_dim=64, nheads=4, enc_layers=1, dec_layers=3, dim_feedforward=64,
        enc_dim_feedforward=64, num_queries=8, min_size_test=128, max_size_test=256,
    )
    base.update(kw)
    return Mask2FormerConfig(**base)


def synthetic_outputs(h4: int = 16, w4: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """6 queries on a (h4, w4) grid with crisp masks (logits +-8) and known classes."""
    logits = torch.full((6, 5), -5.0)
    masks = torch.full((6, h4, w4), -7.3)  # not -8: bilinear midpoints would be exact 0-ties
    logits[0, 0] = 8  # disc, confident, top-left box
    masks[0, 2:7, 2:8] = 8
    logits[1, 0] = 8  # another disc, bottom-right
    masks[1, 9:14, 12:18] = 8
    logits[2, 2] = 8  # sky, top band (minus the discs)
    masks[2, :8, :] = 8
    logits[3, 2] = 7  # sky again, a second band: merged into one stuff segment
    masks[3, 8:10, :] = 8
    logits[4, 3] = 1.2  # grass, not confident (p = 0.55 < 0.8): dropped, but covers the bottom
    logits[4, 4] = 1.0
    masks[4, 10:, :] = 8
    logits[5, 4] = 9  # no object
    masks[5] = 8
    return logits, masks


def make_prediction(image_hw=(60, 75), padded=(64, 80), inp=(60, 75), max_elements=None) -> Prediction:
    logits, masks = synthetic_outputs()
    image = np.zeros((*image_hw, 3), np.uint8)
    pred = Prediction(image, logits, masks, padded, inp, small_config())
    if max_elements is not None:  # small chunks, probabilities recomputed per chunk
        pred._upsampler = MaskUpsampler(masks, padded, inp, image_hw, max_elements=max_elements)
        return pred
    return pred.prepare()  # the whole probability map cached once


def reference_logits(pred: Prediction) -> torch.Tensor:
    return resize_mask_logits(pred.pred_masks.double(), pred.padded_size, pred.input_size, pred.size).float()


@pytest.mark.parametrize("sizes", [((60, 75), (64, 80), (60, 75)), ((120, 150), (64, 80), (60, 75)),
                                   ((31, 40), (64, 80), (62, 80))])
@pytest.mark.parametrize("max_elements", [None, 500])  # 500: forces many row chunks
def test_chunked_tasks_equal_the_reference_post_processing(sizes, max_elements):
    image_hw, padded, inp = sizes
    pred = make_prediction(image_hw, padded, inp, max_elements)
    full = reference_logits(pred)
    ref_pan = panoptic_inference(pred.pred_logits, full, IS_THING)
    pan = pred.panoptic()
    assert np.array_equal(pan.segment_map, ref_pan.segment_map)
    assert [(s.id, s.category_id, s.isthing, s.area) for s in pan.segments] == \
        [(s.id, s.category_id, s.isthing, s.area) for s in ref_pan.segments]
    ref_sem = semantic_inference(pred.pred_logits, full).argmax(0).numpy()
    assert np.array_equal(pred.semantic().label_map, ref_sem)
    ref_ins = instance_inference(pred.pred_logits, full, topk=10, thing_only=IS_THING)
    ins = pred.instance(topk=10)
    assert np.allclose(ins.scores, ref_ins.scores, atol=1e-5)

    def canonical(r):  # equal scores may come out in either order
        return sorted((int(lbl), round(float(sc), 5), m.tobytes()) for lbl, sc, m in zip(r.labels, r.scores, r.masks))
    assert canonical(ins) == canonical(ref_ins)


def test_panoptic_follows_the_official_rules():
    pred = make_prediction()
    pan = pred.panoptic()
    cats = sorted((s.category_id, s.isthing) for s in pan.segments)
    # two discs (things, separate), one sky (two queries merged), grass dropped (p < 0.8), no-object dropped
    assert cats == [(0, True), (0, True), (2, False)]
    assert pred.segment_queries()[next(s.id for s in pan.segments if s.category_id == 2)] == [2, 3]
    assert (pan.segment_map == 0).any()  # the bottom is void: only the dropped grass covered it
    for s in pan.segments:
        assert s.area == int((pan.segment_map == s.id).sum()) and s.area > 0
    assert all(s.score > 0.8 for s in pan.segments)
    # lower thresholds bring the grass back (the disc covers 20% of the grass mask)
    low = pred.panoptic(object_mask_threshold=0.3, overlap_threshold=0.7)
    assert 3 in {s.category_id for s in low.segments}


def test_instance_semantic_and_app_helpers():
    pred = make_prediction()
    ins = pred.instance()
    assert set(ins.labels.tolist()) <= {0, 1}  # a panoptic model's instances are things only
    assert ins.masks.shape[1:] == (60, 75) and np.all(np.diff(ins.scores) <= 0)
    top = ins.masks[0]
    x0, y0, x1, y1 = ins.boxes[0]
    ys, xs = np.nonzero(top)
    assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert len(pred.instance(thing_only=False)) > len(ins)
    sem = pred.semantic(with_probs=True)
    assert sem.probs.shape == (4, 60, 75) and np.array_equal(sem.probs.argmax(0), sem.label_map)
    unc = pred.uncertainty()
    assert unc.shape == (60, 75) and 0 <= unc.min() and unc.max() <= 1
    assert unc[5, 5] < 0.01 and unc[-2, -2] > 0.3  # confident disc vs. only the unsure grass
    cands = pred.candidates_at(x=10, y=55)  # bottom: covered by grass (dropped) and no-object query
    assert [c.query for c in cands][:1] == [4] and cands[0].category_id == 3 and cands[0].mask[55, 10]
    assert pred.candidates_at(x=10, y=55, k=1)[0].query == 4
    assert pred.top_classes(4, k=2)[0][0] == 3
    with pytest.raises(ValueError, match="outside"):
        pred.candidates_at(x=500, y=0)


def test_agrees_with_transformers_compute_segments_on_crisp_masks():
    """Where both rules agree (confident queries, crisp masks, every pixel won by a >= 0.5 mask)."""
    from transformers.models.mask2former.image_processing_pil_mask2former import compute_segments

    logits, masks = synthetic_outputs()
    logits[4, 3] = 9  # make the grass confident so that every pixel is covered
    pred = Prediction(np.zeros((60, 75, 3), np.uint8), logits, masks, (64, 80), (60, 75), small_config())
    full = reference_logits(pred)
    scores, labels = pred.class_probs.max(-1)
    keep = labels.ne(4) & (scores > 0.8)
    hf_map, hf_segments = compute_segments(full[keep].sigmoid(), scores[keep], labels[keep], 0.5, 0.8,
                                           label_ids_to_fuse={2, 3}, target_size=None)
    ours = pred.panoptic()
    assert np.array_equal(hf_map.numpy(), ours.segment_map)
    hf_classes = {s["id"]: s["label_id"] for s in hf_segments}
    assert hf_classes == {s.id: s.category_id for s in ours.segments}


def test_where_transformers_differs_ours_follows_the_official_code():
    """A pixel that every kept mask gives < 0.5 is void officially; transformers assigns it to the argmax."""
    from transformers.models.mask2former.image_processing_pil_mask2former import compute_segments

    logits, masks = synthetic_outputs()
    masks[2, :8, 18:] = -0.5  # sky is unsure (p = 0.38) in the top-right corner, nobody else claims it
    pred = Prediction(np.zeros((16, 20, 3), np.uint8), logits, masks, (64, 80), (64, 80), small_config())
    full = reference_logits(pred)
    scores, labels = pred.class_probs.max(-1)
    keep = labels.ne(4) & (scores > 0.8)
    hf_map, _ = compute_segments(full[keep].sigmoid(), scores[keep], labels[keep], 0.5, 0.8, {2, 3}, None)
    ours = pred.panoptic().segment_map
    assert ours[0, 19] == 0 and hf_map[0, 19] != 0


def test_resize_matches_detectron2():
    assert resize_shortest_edge_size(480, 640, 800, 1333) == (800, 1067)
    assert resize_shortest_edge_size(640, 480, 800, 1333) == (1067, 800)
    assert resize_shortest_edge_size(1000, 3000, 800, 1333) == (444, 1333)
    assert resize_shortest_edge_size(512, 683, 512, 2048) == (512, 683)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(build_model(small_config()).eval(), device="cpu")


def _odd_images(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (90, 140, 3), dtype=np.uint8)
    paths = {}
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(tmp_path / "16bit.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(tmp_path / "exif.jpg", exif=exif)
    for name in ("gray.png", "rgba.png", "16bit.png", "exif.jpg"):
        paths[name] = tmp_path / name
    return rgb, paths


def test_predict_odd_images_at_original_size(tmp_path, predictor):
    rgb, paths = _odd_images(tmp_path)
    for name, path in paths.items():
        pred = predictor.predict(path)
        expected = (140, 90) if name == "exif.jpg" else (90, 140)  # EXIF orientation applied
        assert pred.size == expected, name
        assert pred.panoptic().segment_map.shape == expected
        assert pred.semantic().label_map.shape == expected
        assert pred.instance().masks.shape[1:] == expected
    pred = predictor.predict(rgb)
    assert pred.input_size == (128, 199) and pred.padded_size == (128, 224)


def test_switching_task_never_runs_the_model_again(predictor, monkeypatch):
    # counted on the class: the predictor runs a converted copy of its model, not predictor.model
    from m2f_core.model import Mask2Former

    calls = []
    forward = Mask2Former.forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Mask2Former, "forward", counting)
    pred = predictor.predict(np.full((64, 96, 3), 128, np.uint8))
    assert len(calls) == 1
    first = pred.panoptic()
    pred.instance()
    pred.semantic()
    pred.uncertainty()
    assert pred.panoptic() is first  # cached
    assert len(calls) == 1


def test_predict_many_reports_bad_images_and_goes_on(tmp_path, predictor):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    pairs = list(predictor.predict_many([bad, good, bad], progress=False))
    assert [item for item, _ in pairs] == [bad, good, bad]  # every image answered, in order
    results = dict(pairs)
    assert isinstance(results[bad], ValueError) and "bad.jpg" in str(results[bad])
    assert isinstance(results[good], Prediction)
    alone = predictor.predict(good)  # the bad image before it changed nothing
    assert torch.equal(results[good].pred_logits, alone.pred_logits)
    assert np.array_equal(results[good].panoptic().segment_map, alone.panoptic().segment_map)


@pytest.mark.parametrize("cache", ["active", "none"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruned_views_equal_the_reference_in_every_cache_mode(cache, seed, monkeypatch):
    """Trained-like outputs (a few confident queries, many no-object ones, soft borders): the views
    that read only the active queries and bound the rest give the reference's answers, whether the
    active queries' probabilities are cached or not, in small row blocks."""
    from tools.benchmark import trained_like_outputs

    num_queries, num_classes, size = 40, 12, (92, 124)
    out = trained_like_outputs(num_queries, num_classes, (96, 128), seed=seed, things=8, stuff=4)
    is_thing = [k < 6 for k in range(num_classes)]
    config = small_config(class_names=[f"c{k}" for k in range(num_classes)], is_thing=is_thing,
                          num_queries=num_queries)
    pred = Prediction(np.zeros((*size, 3), np.uint8), out["pred_logits"], out["pred_masks"], (96, 128), (92, 124),
                      config)
    active = len(pred.active_queries)
    assert active < num_queries  # the case the pruning is for
    pixels = size[0] * size[1]
    limit = {"active": active * pixels, "none": active * pixels - 1}[cache]
    monkeypatch.setattr(Prediction, "CACHE_ELEMENTS", limit)
    monkeypatch.setattr(Prediction, "BLOCK_PIXELS", 700)  # several row blocks
    pred.prepare()
    cached = pred.cached_queries
    assert (cached is None) == (cache == "none")
    assert cache != "active" or torch.equal(cached, pred.active_queries)

    full = reference_logits(pred)
    ref_pan = panoptic_inference(pred.pred_logits, full, is_thing)
    pan = pred.panoptic()
    assert np.array_equal(pan.segment_map, ref_pan.segment_map) and len(pan.segments) >= 4
    ref_sem = semantic_inference(pred.pred_logits, full)
    assert np.array_equal(pred.semantic().label_map, ref_sem.argmax(0).numpy())
    assert np.allclose(pred.semantic(with_probs=True).probs, ref_sem.numpy(), atol=1e-5)
    ref_ins = instance_inference(pred.pred_logits, full, topk=50, thing_only=is_thing)
    ins = pred.instance(topk=50)
    assert np.allclose(np.sort(ins.scores), np.sort(ref_ins.scores), atol=1e-5)
    assert sorted(m.tobytes() for m in ins.masks) == sorted(m.tobytes() for m in ref_ins.masks)
    best_cls = pred.class_probs[:, :-1].max(-1).values
    ref_unc = 1 - (full.sigmoid() * best_cls[:, None, None]).amax(0)
    assert np.allclose(pred.uncertainty(), ref_unc.numpy(), atol=1e-6)


@pytest.mark.parametrize("kind", ["uniform", "flat"])
@pytest.mark.parametrize("route", ["sampled", "per_block"])
def test_unsure_outputs_take_the_dense_route_and_stay_exact(kind, route, monkeypatch):
    """Outputs the bounds cannot prune (random logits; an untrained model's near-zero logits: every query
    active, flat class probabilities) give the reference's semantic labels, whether the sample sends the
    whole view to the dense computation or each undecided row block falls back to it."""
    g = torch.Generator().manual_seed(7)
    num_queries, num_classes, size = 30, 25, (92, 124)
    scale = 1.0 if kind == "uniform" else 0.02
    logits = scale * torch.randn(num_queries, num_classes + 1, generator=g)
    masks = scale * torch.randn(num_queries, 24, 32, generator=g)
    config = small_config(class_names=[f"c{k}" for k in range(num_classes)], is_thing=[True] * num_classes,
                          num_queries=num_queries)
    decisions = []
    decide = Prediction._mostly_undecided

    def spy(self, undecided):
        decisions.append(decide(self, undecided))
        return decisions[-1] if route == "sampled" else False

    monkeypatch.setattr(Prediction, "_mostly_undecided", spy)
    monkeypatch.setattr(Prediction, "BLOCK_PIXELS", 700)  # several row blocks
    pred = Prediction(np.zeros((*size, 3), np.uint8), logits, masks, (96, 128), size, config).prepare()
    full = reference_logits(pred)
    assert np.array_equal(pred.semantic().label_map, semantic_inference(pred.pred_logits, full).argmax(0).numpy())
    assert decisions == [True]  # the sample saw that the bounds decide little here
    best_cls = pred.class_probs[:, :-1].max(-1).values
    ref_unc = 1 - (full.sigmoid() * best_cls[:, None, None]).amax(0)
    assert np.allclose(pred.uncertainty(), ref_unc.numpy(), atol=1e-6)


def test_trained_like_outputs_keep_the_pruned_route(monkeypatch):
    from tools.benchmark import trained_like_outputs

    out = trained_like_outputs(40, 12, (96, 128), seed=0, things=8, stuff=4)
    config = small_config(class_names=[f"c{k}" for k in range(12)], is_thing=[k < 6 for k in range(12)],
                          num_queries=40)
    decisions = []
    decide = Prediction._mostly_undecided
    monkeypatch.setattr(Prediction, "_mostly_undecided", lambda self, f: decisions.append(decide(self, f)) or
                        decisions[-1])
    pred = Prediction(np.zeros((92, 124, 3), np.uint8), out["pred_logits"], out["pred_masks"], (96, 128),
                      (92, 124), config).prepare()
    pred.semantic()
    assert decisions == [False]


def test_views_work_outside_the_inference_mode_the_prediction_was_made_in():
    """Predictor.predict runs under inference_mode; the lazily filled upsampler state must still be
    usable when a view is first asked for later, outside it (the app, the CLIs)."""
    from tools.benchmark import trained_like_outputs

    out = trained_like_outputs(40, 4, (64, 80), seed=3, things=4, stuff=2)
    # one query the panoptic result must drop (class 1 at p = e/(e + e^0.5) = 0.622 < 0.8) whose mask
    # covers the top-left corner, so that candidates_at has something to find there
    dropped = int(out["pred_logits"][:, -1].argmax())
    out["pred_logits"][dropped] = torch.tensor([-20.0, 1.0, -20.0, -20.0, 0.5])
    out["pred_masks"][dropped, :4, :5] = 6.0
    with torch.inference_mode():
        pred = Prediction(np.zeros((60, 75, 3), np.uint8), out["pred_logits"], out["pred_masks"], (64, 80),
                          (60, 75), small_config(num_queries=40)).prepare()
    full = reference_logits(pred)
    assert np.array_equal(pred.semantic().label_map, semantic_inference(pred.pred_logits, full).argmax(0).numpy())
    ins = pred.instance(topk=50, thing_only=False)
    ref_ins = instance_inference(pred.pred_logits, full, topk=50)
    assert len(ins) == len(ref_ins) == 50 and np.allclose(np.sort(ins.scores), np.sort(ref_ins.scores), atol=1e-5)
    assert sorted(m.tobytes() for m in ins.masks) == sorted(m.tobytes() for m in ref_ins.masks)
    cands = pred.candidates_at(x=3, y=3, k=3)
    used = {q for qs in pred.segment_queries().values() for q in qs}
    # the oracle: queries whose full-size logit at (3, 3) is positive and that no segment used, best class first
    best = pred.class_probs[:, :-1].max(-1)
    covering = [q for q in (full[:, 3, 3] > 0).nonzero().flatten().tolist() if q not in used]
    expected = sorted(covering, key=lambda q: -float(best.values[q]))[:3]
    assert dropped in expected and [c.query for c in cands] == expected
    for c in cands:
        assert c.category_id == int(best.indices[c.query]) and c.mask[3, 3]
        assert np.array_equal(c.mask, (full[c.query] > 0).numpy())
    mine = next(c for c in cands if c.query == dropped)
    assert mine.category_id == 1 and mine.score == pytest.approx(np.e / (np.e + np.exp(0.5)), abs=1e-5)
    assert mine.mask[:14, :18].all() and not mine.mask[30:].any()
