"""Dense video captioning: PDVC and CM2 (PDVC + cross-modal memory retrieval), one model tree.

The family's entry point for the shared recipe is `make_task` (models/dense/task.py).
"""

from models.dense.config import DenseConfig
from models.dense.data import DenseBatch, DenseCaptionDataset, InMemoryFeatures, VideoAnnotation, collate
from models.dense.model import DenseCaptioner, DenseOutput
from models.dense.task import DenseTask, make_task

__all__ = [
    "DenseBatch",
    "DenseCaptionDataset",
    "DenseCaptioner",
    "DenseConfig",
    "DenseOutput",
    "DenseTask",
    "InMemoryFeatures",
    "VideoAnnotation",
    "collate",
    "make_task",
]
