"""Data: dataset readers and writers, training-data pipeline, shipped class lists (``classes/``).

Import names from the module that defines them; this package imports nothing, so importing one of
its modules loads only what that module needs:

- ``records``: ``Sample``, ``GTSegment``, ``InstanceAnnotation``, the ``SegmentationDataset`` base.
- ``specs``: ``open_dataset("FORMAT:PATH")`` and ``parse_dataset_spec`` (readers imported when asked for).
- readers / writers: ``coco_panoptic``, ``coco_instances`` (with ``coco_json``, the checks both
  share), ``ade20k``, ``cityscapes``, ``semantic``, ``corrections``.
- annotation tools: ``cvat``, ``label_studio``, ``labelme`` (readers and writers, with the shared
  rules in ``annotation_tools`` and masks <-> polygons in ``polygons``); ``interchange`` is their
  command line (``docs/interchange.md``).
- helpers: ``errors`` (``DatasetError``), ``fileio`` (checked JSON / PNG access), ``categories``.
- training data: ``transforms`` (augmentations), ``targets``, ``train_dataset``; ``synthetic``
  (the synthetic scene generator).

Crash-safe writes are ``m2f_core.atomic``; image loading is ``m2f_core.images``.
"""
