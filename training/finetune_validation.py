"""Validation during a few-shot fine-tune: held-out and retained metrics, and the best weights."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from m2f_core.metrics.model_eval import headline, primary_value

from .finetune_recipe import FinetuneRecipe


def evaluate_weights(model, val_set, device: str) -> dict[str, Any]:
    """``evaluate_model`` of the weights as they are now, in eval mode (the training mode is restored)."""
    from m2f_core.metrics.model_eval import evaluate_model
    from m2f_core.predictor import Predictor

    was_training = model.training
    model.eval()
    try:
        return evaluate_model(Predictor(model, device=device), val_set, progress=False)
    finally:
        model.train(was_training)


class Validator:
    """Validation of the weights during a run: the held-out metrics, the retained ones, the best weights.

    The best weights have the best held-out score (by more than ``min_delta``; the starting weights
    count) among those whose score on the retained images fell by at most ``retain_tolerance``.
    Early stopping follows the held-out score alone (``bad_evals``: validations since it last rose by
    more than ``min_delta``), so a run whose retained score dips early, as it does while replay catches
    up, goes on learning rather than stopping at the first rejected checkpoints.
    """

    def __init__(self, model, val_set, retain_set, device: str, recipe: FinetuneRecipe, metrics_file,
                 evaluate: Callable[[Any, Any, str], dict[str, Any]] | None = None) -> None:
        self.model, self.val_set, self.retain_set, self.device = model, val_set, retain_set, device
        self.evaluate = evaluate or evaluate_weights  # (model, dataset, device) -> evaluate_model's result
        self.recipe, self.metrics_file = recipe, metrics_file
        self.curve: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"iteration": 0, "value": None, "metrics": {}, "retained": {}, "result": None}
        self.best_state = self._state()
        self.retain_start: float | None = None
        self.bad_evals = 0
        self.top_value: float | None = None  # the best held-out score seen, selected or not
        self.seconds: float | None = None

    def _state(self) -> dict[str, Any]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def best_view(self) -> dict[str, Any]:
        return {"iter": self.best["iteration"], "value": self.best["value"]}

    def validate(self, it: int) -> dict[str, Any] | None:
        """Evaluate the current weights (held-out, then retained); update the best. Returns the held-out result."""
        if self.val_set is None:
            return None
        t0 = time.monotonic()
        result = self.evaluate(self.model, self.val_set, self.device)
        m = headline(result)
        kept = headline(self.evaluate(self.model, self.retain_set, self.device)) if self.retain_set is not None \
            else {}
        kept_value = primary_value(kept)
        if it == 0:
            self.retain_start = kept_value
        point = {"iter": it, **m}
        if kept:
            point["retained"] = kept
        self.curve.append(point)
        self.metrics_file.write(json.dumps({"iter": it, "eval": m, **({"retained": kept} if kept else {})}) + "\n")
        self.metrics_file.flush()
        value = primary_value(m)
        tolerance = self.recipe.retain_tolerance
        retained_ok = (tolerance is None or kept_value is None or self.retain_start is None
                       or kept_value >= self.retain_start - tolerance)
        if value is not None and retained_ok and (self.best["value"] is None
                                                  or value > self.best["value"] + self.recipe.min_delta):
            self.best = {"iteration": it, "value": value, "metrics": m, "retained": kept, "result": result}
            self.best_state = self._state()
        if value is not None and (self.top_value is None or value > self.top_value + self.recipe.min_delta):
            self.top_value = value
            self.bad_evals = 0
        elif it > 0:
            self.bad_evals += 1
        self.seconds = time.monotonic() - t0
        return result
