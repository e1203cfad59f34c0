"""Moment retrieval (NLMR / SLMR): MRNet's maskable retention over MMN's 2-D proposal map; MMN = mask mode no."""
from models.grounding.task import make_task

__all__ = ["make_task"]
