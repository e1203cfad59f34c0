"""MemBridge: a fusion encoder with memory-generated bridge tokens; pre-training, retrieval, captions, QA."""
from models.membridge.task import make_task

__all__ = ["make_task"]
