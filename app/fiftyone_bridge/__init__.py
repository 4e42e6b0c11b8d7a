"""FiftyOne bridge: our datasets, predictions and metrics inside FiftyOne, and back out for training.

FiftyOne has no panoptic label type and no panoptic quality, so this package supplies both:

- a panoptic annotation is a ``Detections`` field whose masks never overlap (things AND stuff), each
  detection carrying ``segment_id``, ``category_id`` (the dataset's id), ``isthing``, ``iscrowd``
  and ``area``; the segment-id map is rebuilt from them without loss (``convert``);
- a semantic map is a ``Segmentation`` whose pixel value is the contiguous class index + 1, 0 being
  void / ignore (FiftyOne treats 0 as background), with ``mask_targets`` naming the classes;
- instance masks (possibly overlapping) are a second ``Detections`` field.

Fields of a dataset (``PREFIX`` = ``gt`` for ground truth, ``pred`` / ``finetuned`` / your own
for predictions): ``PREFIX_panoptic``, ``PREFIX_instances``, ``PREFIX_semantic``; predictions
add ``PREFIX_uncertainty`` (mean, for sorting) and ``PREFIX_uncertainty_map`` (a ``Heatmap``).
Evaluation writes ``PREFIX_pq``, ``PREFIX_sq``, ``PREFIX_rq``, ``PREFIX_miou``, ``PREFIX_ap``
per sample (sort the App by them to find the worst samples) and a summary in
``dataset.info["m2f_evaluations"][PREFIX]``; PQ is also the FiftyOne evaluation ``PREFIX_pan``, with a
result on every panoptic segment (``panoptic_eval``).

Modules: ``convert`` (labels <-> our records, no database), ``core`` (import, predict, export),
``evaluate`` (PQ / mIoU / mask AP), ``panoptic_eval`` (PQ as a FiftyOne evaluation method),
``finetune`` (few-shot runs recorded on the dataset; before / after
with the trained-on, held-out and unseen samples apart),
``editor`` (links into the Gradio editor and the page-load hook that opens them), ``edits`` (what
was saved in the editor back into ``edited_*`` fields), ``__main__``
(the CLI: ``python -m app.fiftyone_bridge --help``). Importing this package does not import
FiftyOne: the Gradio app imports ``editor`` without paying for it.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")  # before fiftyone is imported: no usage pings

MONGODB_NOTICE = "You are running the oldest supported major version of MongoDB"


def _not_mongodb_notice(record: logging.LogRecord) -> bool:
    """FiftyOne logs this deprecation notice on every connection to the MongoDB that fiftyone-db ships;
    nothing a user of our commands can act on. Only this message of that logger is dropped."""
    return not record.getMessage().startswith(MONGODB_NOTICE)


logging.getLogger("fiftyone.core.odm.database").addFilter(_not_mongodb_notice)

GT = "gt"
PRED = "pred"
FINETUNED = "finetuned"
EDITED = "edited"  # the labels corrected in the Gradio editor (``edits.pull_edits``), a sample tag too
PLUGIN_NAME = "@m2f/workbench"

__all__ = ["EDITED", "FINETUNED", "GT", "PLUGIN_NAME", "PRED", "BridgeError", "fields"]


class BridgeError(ValueError):
    """A user-facing problem of the bridge (unknown dataset, missing field, bad option); one line."""


def fields(prefix: str) -> dict[str, str]:
    """The field names of one label set (``gt``, ``pred``...)."""
    return {"panoptic": f"{prefix}_panoptic", "instances": f"{prefix}_instances", "semantic": f"{prefix}_semantic",
            "uncertainty": f"{prefix}_uncertainty", "uncertainty_map": f"{prefix}_uncertainty_map",
            "pq": f"{prefix}_pq", "sq": f"{prefix}_sq", "rq": f"{prefix}_rq", "miou": f"{prefix}_miou",
            "ap": f"{prefix}_ap"}
