"""Dense video captioning: PDVC and CM2 (PDVC + cross-modal memory retrieval), one model tree."""

from models.dense.config import DenseConfig
from models.dense.data import (
    DenseBatch,
    DenseCaptionDataset,
    InMemoryFeatures,
    VideoAnnotation,
    Vocab,
    collate,
)
from models.dense.model import DenseCaptioner, DenseOutput
from models.dense.retrieval import TextBank

__all__ = [
    "DenseBatch",
    "DenseCaptionDataset",
    "DenseCaptioner",
    "DenseConfig",
    "DenseOutput",
    "InMemoryFeatures",
    "TextBank",
    "VideoAnnotation",
    "Vocab",
    "collate",
]
