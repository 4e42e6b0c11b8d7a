"""Process-level runtime settings: malloc tuning (page faults, not timings) and the compile mode."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from model_helpers import small_config

from m2f_core.model import build_model

# A forward-pass-like loop of 16 MB temporaries (convolutions and elementwise ops); reports the
# minor page faults of its last 10 rounds. Stock glibc maps most such blocks afresh every round.
FAULTS = """
import json, resource, sys, torch
import torch.nn.functional as F
from m2f_core.runtime import tune_malloc
applied = tune_malloc() if sys.argv[1] == "tuned" else False
torch.manual_seed(0)
a, w = torch.randn(1, 64, 256, 256), torch.randn(64, 64, 3, 3)
def step():
    y = (F.conv2d(a, w, padding=1) * 2 + 1).relu()
    return F.conv2d(y, w, padding=1).sum()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""

glibc_linux = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                 reason="mallopt is glibc's")


def _faults(mode: str, **env) -> dict:
    proc = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True,
                          env={**os.environ, **env})
    return json.loads(proc.stdout.strip().splitlines()[-1])


@glibc_linux
def test_tuned_malloc_reuses_freed_activations():
    stock, tuned = _faults("stock"), _faults("tuned")
    assert not stock["applied"] and tuned["applied"]
    # measured: about 150 000 faults stock (16 MB blocks mapped afresh), 12 000 tuned
    assert stock["faults"] > 50_000, stock
    assert tuned["faults"] < stock["faults"] / 4, (stock, tuned)


@glibc_linux
def test_stock_malloc_opt_out():
    result = _faults("tuned", M2F_STOCK_MALLOC="1")
    assert not result["applied"]
    assert result["faults"] > 50_000, result


def test_tune_malloc_is_idempotent():
    from m2f_core.runtime import malloc_tuned, tune_malloc

    first = tune_malloc()
    assert tune_malloc() == first == malloc_tuned()


@pytest.mark.slow
def test_compiled_predictor_matches_eager():
    """The optional ``torch.compile`` mode (inductor, frozen weights; ``Predictor(compile=True)``)
    gives the same raw outputs and the same panoptic result on an image."""
    from m2f_core.predictor import Predictor

    config = small_config("resnet").replace(min_size_test=128, max_size_test=160)
    torch.manual_seed(0)
    model = build_model(config).eval()
    image = (np.random.default_rng(0).random((120, 150, 3)) * 255).astype(np.uint8)
    eager = Predictor(model).predict(image)
    compiled = Predictor(model, compile=True).predict(image)
    torch.testing.assert_close(compiled.pred_logits, eager.pred_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled.pred_masks, eager.pred_masks, rtol=1e-4, atol=1e-4)
    assert np.array_equal(compiled.semantic().label_map, eager.semantic().label_map)


def test_compile_needs_the_torch_backend():
    from m2f_core.predictor import Predictor

    with pytest.raises(ValueError, match="torch backend"):
        Predictor("/nonexistent.onnx", backend="onnxruntime", compile=True)
