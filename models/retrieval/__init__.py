"""Text-video retrieval: CLIP4Clip meanP (/ seqTransf) and EMCL-Net on the shared recipe (see task.py)."""
from models.retrieval.task import make_task

__all__ = ["make_task"]
