"""LeRobotDataset v3.0: reading, writing, conversion and fast loading."""

from robotrain.datasets.dataset import LeRobotDataset
from robotrain.datasets.metadata import LeRobotDatasetMetadata

__all__ = ["LeRobotDataset", "LeRobotDatasetMetadata"]
