"""Video ReCap / ReCap-U: hierarchical captions of long videos (clips → segments → summary), one model tree.

The family's entry point for the shared recipe is `make_task` (models/recap/task.py); the recursive caption
extraction is `generate_captions` (stage: `python -m stages.captions <level>`).
"""

from models.recap.config import RecapConfig
from models.recap.model import GatedCrossBlock, QueryMapper, ReCap, TextDecoder
from models.recap.task import RecapData, RecapTask, RecapTrivial, generate_captions, make_task

__all__ = ["GatedCrossBlock", "QueryMapper", "ReCap", "RecapConfig", "RecapData", "RecapTask", "RecapTrivial",
           "TextDecoder", "generate_captions", "make_task"]
