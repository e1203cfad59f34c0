"""Public annotation formats → the canonical manifest (`vidmem.manifest`).

One module per format family, each a pure function from a `Source` (files named in `params.ingest.sources`)
to manifest rows plus per-entry problems (`Parsed`):

| format               | module      | files                                              | rows             |
|----------------------|-------------|----------------------------------------------------|------------------|
| activitynet_captions | activitynet | train.json or val_1.json + val_2.json (annotators) | events           |
| youcook2             | activitynet | youcookii_annotations_trainval.json                | events           |
| charades_sta         | charades    | charades_sta_{split}.txt + Charades_v1_{split}.csv | queries          |
| mmn                  | mmn         | MMN grounding JSON (seconds)                       | queries          |
| activitynet_speech   | mmn         | MMN JSON + `audios` (16 kHz WAVs)                  | queries+audio    |
| tacos                | mmn         | MMN TACoS JSON (frames + fps)                      | queries          |
| msrvtt               | msrvtt      | MSRVTT_data.json + train csv / JSFUSION csv        | captions         |
| msvd                 | msvd        | {split}_list.txt + raw-captions.pkl                | captions         |
| didemo               | didemo      | {split}_data.json + {split}_list.txt               | captions+queries |
| ego4d_hcap           | ego4d_hcap  | clips_*.pkl, segments_*.pkl, videos_*.json (+ *_train_pseudo) | hierarchy (+ hierarchy_pseudo) |
| msrvtt_qa            | msrvtt_qa   | {split}.jsonl + train_ans2label.json               | qa               |

Shared pieces: `readers` (JSON with duplicate keys kept aside, CSV, lines, restricted pickle), `checks` (the
one home of entry validation), `videos` (video file lookup, ffprobe duration), `vocab` (PDVC-style word
vocabulary), `registry` (formats and params sources), `assemble` (the whole `ingest` run).
"""

from vidmem.formats.base import Bad, Item, Parsed, Problem, Source
from vidmem.formats.registry import FORMATS, make_sources

__all__ = ["Bad", "FORMATS", "Item", "Parsed", "Problem", "Source", "make_sources"]
