"""The images of the app's ``--dataset``: their paths, their ground truth and their ids in the dataset.

``DatasetImages`` is read by the workbench (the images to browse, the ground truth beside the
prediction) and by the loop controller (an export keeps each image's dataset id and names the dataset
as its ``source``; an evaluation picks the images a run never trained on).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from m2f_core.data.records import SegmentationDataset

__all__ = ["DatasetImages"]


class DatasetImages:
    """A dataset's images by path (none without a dataset); read-only after construction."""

    def __init__(self, dataset: SegmentationDataset | None = None, spec: str | None = None,
                 split: str | None = None) -> None:
        self.dataset = dataset
        self.spec = spec  # "FORMAT:PATH" of ``dataset`` (the export manifest's ``source``)
        self.split = split
        self._index: dict[str, int] = {}  # image path -> its index in the dataset
        self._ids: dict[str, int | str] = {}  # image path -> its id in the dataset (kept by exports)
        self.paths: list[Path] = []
        if dataset is not None:
            for i in range(len(dataset)):
                sample = dataset[i]
                path = Path(sample.file_name)
                self._index[str(path)] = i
                self._ids[str(path)] = sample.image_id
                self.paths.append(path)

    def index(self, path: str | Path | None) -> int | None:
        """The dataset index of the image at ``path`` (None: not a dataset image)."""
        return self._index.get(str(path))

    def source_id(self, path: str | Path | None) -> int | str | None:
        """The dataset's id of the image at ``path`` (None: not a dataset image)."""
        return self._ids.get(str(path))

    @property
    def ids(self) -> set[int | str]:
        """Every image id of the dataset (an export gives its other images ids outside these)."""
        return set(self._ids.values())

    def indices_except(self, names: Collection[str]) -> list[int]:
        """The dataset indices of the images whose file name is not in ``names``, in order."""
        return sorted(i for path, i in self._index.items() if Path(path).name not in names)
