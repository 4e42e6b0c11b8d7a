"""Evaluation metrics of Mask2Former: panoptic quality, semantic mIoU, instance mask AP.

- ``pq_compute_single`` / ``PQStat`` / ``pq_compute``: panoptic quality, the cocodataset/panopticapi algorithm.
- ``SemSegConfusion`` / ``sem_seg_compute``: mIoU, fwIoU, mACC, pACC, the detectron2 ``SemSegEvaluator`` rules.
- ``mask_ap_compute``: COCO mask AP through ``pycocotools`` ``COCOeval(iouType="segm")``.

Every function returns percent values; ``None`` marks a value that is undefined (nothing to average).
Bad inputs raise ``MetricInputError`` (a ``ValueError``) with a one-line message naming the file and the problem.
"""

from __future__ import annotations

from .errors import MetricInputError
from .instance import mask_ap_compute
from .panoptic import PQStat, PQStatCat, id_to_rgb, pq_compute, pq_compute_single, pq_results, rgb_to_id
from .semantic import SemSegConfusion, sem_seg_compute

__all__ = [
    "MetricInputError",
    "PQStat",
    "PQStatCat",
    "SemSegConfusion",
    "id_to_rgb",
    "mask_ap_compute",
    "pq_compute",
    "pq_compute_single",
    "pq_results",
    "rgb_to_id",
    "sem_seg_compute",
]
