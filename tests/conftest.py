"""Shared test setup: offline, quiet libraries, small thread count for the 2-core machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # tests/hf_reference.py, tests/reference/ (oracles), helpers

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tools/ (the benchmark) is imported as ``tools.benchmark``
    sys.path.append(str(REPO))
SHARED_DATA = REPO.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def coco_sample(tmp_path_factory) -> Path:
    """The real COCO panoptic sample as a folder: images/, panoptic/ (PNGs), panoptic.json.

    That is also the app's corrections layout, so ``corrections:<folder>`` reads it.
    """
    import json
    import shutil

    source = SHARED_DATA / "coco_panoptic_panopticapi"
    if not source.exists():
        pytest.skip(f"shared real data not found at {source}")
    root = tmp_path_factory.mktemp("coco_sample")
    data = source / "sample_data"
    shutil.copytree(data / "input_images", root / "images")
    shutil.copytree(data / "panoptic_examples", root / "panoptic")
    ann = json.loads((data / "panoptic_examples.json").read_text())
    ann.setdefault("categories", json.loads((source / "panoptic_coco_categories.json").read_text()))
    if "images" not in ann:
        ann["images"] = json.loads((data / "images_info_examples.json").read_text())["images"]
    (root / "panoptic.json").write_text(json.dumps(ann))
    return root


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright launches Debian's Chromium (``playwright install`` cannot download browsers here).

    No sandbox (containers), no GPU, /tmp instead of a small /dev/shm, and no background traffic
    (component updates, sync, first-run pages) on a machine without network.
    """
    return {
        **browser_type_launch_args,
        "executable_path": "/usr/bin/chromium",
        "args": ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"],
    }


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module whose inputs are tiny: as fast, and it does not stall on a busy
    machine (restored afterwards). Use with ``pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ the app in a browser


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    from app_helpers import app_assets

    return app_assets(tmp_path_factory)


@pytest.fixture(scope="session")
def expected(assets):
    """The prediction the app will show for the test scene (same weights, same machine)."""
    from m2f_core.predictor import Predictor

    pred = Predictor(str(assets["weights"]), device="cpu").predict(str(assets["scene"]))
    return pred


@pytest.fixture(scope="session")
def server(assets, tmp_path_factory):
    """``launch.py`` in a subprocess: yields (url, corrections dir, log file)."""
    from browser_helpers import serve

    yield from serve(assets, tmp_path_factory)
