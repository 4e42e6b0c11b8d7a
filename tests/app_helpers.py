"""Small deterministic weights and a test scene for the app tests (no trained model needed).

Random ``synthetic_small`` weights predict "no object" everywhere, so the panoptic result is empty.
``make_test_weights`` keeps the random network but re-scales its two output heads on one reference
scene: class logits centred over the queries (each query gets a confident, varied class; no-object
pushed down) and mask embeddings made orthogonal to the mean pixel feature (each mask covers part of
the image). The saved config keeps every query and overlap (thresholds 0), so the result is a
partition of the scene into over a dozen segments, things and stuff, with dropped queries to recover
(the crafted heads are sensitive to the scene: ``SCENE_SEED`` is one that gives such a partition).
Deterministic on a given machine; tests read the expected result from the same weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SCENE_SEED = 13  # with the crafted weights: 17 segments (15 things, 2 stuff) of 2-23000 px
SCENE_SIZE = (256, 320)  # H, W


def make_test_scene(path: Path, seed: int = SCENE_SEED, size: tuple[int, int] = SCENE_SIZE) -> Path:
    """A synthetic scene saved as PNG."""
    from m2f_core.data.synthetic import generate_scene

    image, _, _ = generate_scene(np.random.default_rng(seed), *size)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def make_test_weights(folder: Path, scene: Path) -> Path:
    """Save small crafted ``synthetic_small`` weights (see the module doc) to ``folder``."""
    from m2f_core import build_model, get_preset, save_model
    from m2f_core.predictor import Predictor

    torch.manual_seed(0)
    model = build_model(get_preset("synthetic_small")).eval()
    head = model.sem_seg_head.predictor
    seen: dict[str, torch.Tensor] = {}

    def keep_mask_features(module, args, kwargs):
        # at inference the pixel decoder's 1x1 projection is folded into the predictor: apply it here
        projection = kwargs.get("mask_projection")
        seen["f"] = (projection(args[1]) if projection is not None else args[1]).detach()

    hooks = [
        head.class_embed.register_forward_hook(lambda m, i, o: seen.__setitem__("q", i[0].detach())),
        head.register_forward_pre_hook(keep_mask_features, with_kwargs=True),
        head.mask_embed.register_forward_hook(lambda m, i, o: seen.__setitem__("m", o.detach())),
    ]
    Predictor(model, device="cpu").predict(np.asarray(Image.open(scene).convert("RGB")))
    for h in hooks:
        h.remove()
    q, feats, emb = seen["q"][0], seen["f"][0], seen["m"][0]  # (Q, C), (C, h, w), (Q, C) of the last layer
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        mean_q = q.mean(0)
        w = torch.randn(head.class_embed.out_features, q.shape[1], generator=gen)
        w *= 4.0 / ((q - mean_q) @ w.T).std()
        head.class_embed.weight.copy_(w)
        head.class_embed.bias.copy_(-(w @ mean_q))
        head.class_embed.bias[-1] -= 10.0  # no-object
        u = feats.mean((1, 2))
        u = u / u.norm()
        proj = torch.eye(len(u)) - torch.outer(u, u)
        last = head.mask_embed.layers[-1]
        last.weight.copy_(proj @ last.weight)
        last.bias.copy_(proj @ last.bias)
        spread = (emb @ proj.T @ feats.flatten(1)).std()
        last.weight.mul_(4.0 / spread)
        last.bias.mul_(4.0 / spread)
    config = dataclasses.replace(model.config, object_mask_threshold=0.0, overlap_threshold=0.0)
    save_model(model, folder, config=config)
    return folder


def app_assets(tmp_path_factory) -> dict[str, Path]:
    """The test scene and crafted weights, made once per test session (shared by the app test files)."""
    root = tmp_path_factory.getbasetemp() / "app_assets"
    scene, weights = root / "scene.png", root / "weights"
    if not (weights / "config.json").is_file():
        make_test_scene(scene)
        make_test_weights(weights, scene)
    return {"root": root, "scene": scene, "weights": weights}
