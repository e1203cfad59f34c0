"""SynthVid: the embedded default dataset, rendered from `params.synth` and written in the public formats.

`generate(read(SynthConfig, params["synth"], "synth"))` renders shape videos with timed, overlapping events and
writes dense captions, grounding queries (+ spoken versions), retrieval captions, a caption hierarchy for long
videos and QA pairs, as ActivityNet Captions, Charades-STA, MMN, ActivityNet Speech, MSR-VTT, Ego4D-HCap and
MSRVTT-QA files. See `writers.py` for the layout.
"""
from vidmem.synth.config import SynthConfig
from vidmem.synth.dataset import Dataset, build, generate, metrics

__all__ = ["Dataset", "SynthConfig", "build", "generate", "metrics"]
