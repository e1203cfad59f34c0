"""Video ReCap's whole hierarchy on one long video: wall time and peak memory, 60 minutes against 6.

    python -m bench.recap [--long 60] [--short 6] [--segment-sec 30]

Each length runs in its own process (so peak RSS is that run's): window features → clip captions (every
4-s window) → segment descriptions (every `segment_sec`, reading the generated clip captions inside) → one
summary (≤ `video_feats` features + the generated descriptions), with the family's default model size
(`params.yaml families.recap`), seeded and untrained: an untrained decoder never emits EOS, so every caption
runs to its word limit — the worst case for time. The window features are random 192-d rows, one per 4 s
(what `extract@lavila` stores); that stage's own memory bound on hour-long videos is `bench.extract`'s.
Goals: peak-memory ratio ≤ 1.2×, time ratio ≈ the length ratio (10×).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch, yaml
torch.set_num_threads(1)
from models.recap.config import RecapConfig
from models.recap.model import ReCap
from models.recap.task import RecapData, RecapTask
from vidmem.formats.vocab import Vocab, build_vocab
from vidmem.paths import Paths
from vidmem.training import read_task_params

minutes, segment_sec = float(sys.argv[1]), float(sys.argv[2])
fam = yaml.safe_load(open("params.yaml"))["families"]["recap"]
recipe, cfg = read_task_params(RecapConfig, [(fam, "families.recap"), ({"segment_sec": segment_sec}, "bench")])
dur = minutes * 60
n = int(np.ceil(dur / cfg.clip_sec))
rng = np.random.default_rng(0)
feats = rng.normal(size=(n, cfg.lavila_dim)).astype(np.float32)
words = "the a red blue green circle square moves left right grows spins and then video shows".split()
vocab = Vocab.from_json(build_vocab([" ".join(words)]))
data = RecapData({"long": ("test", dur)}, [], {"long": (feats, np.arange(n) * cfg.clip_sec)}, vocab)
torch.manual_seed(0)
t0 = time.perf_counter()
out = {}
clips = segs = None
for level in ("clip", "segment", "video"):
    task = RecapTask(f"bench_{level}", recipe, RecapConfig(**{**vars(cfg), "level": level}), Paths(), data=data)
    model = ReCap(task.config, vocab.size).eval()
    lower = {"clip": {}, "segment": {"long": clips}, "video": {"long": segs}}[level]
    got = task.caption_videos(model, level, ["long"], lower)["long"]
    out[level] = len(got)
    if level == "clip":
        clips = got
    elif level == "segment":
        segs = got
wall = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"minutes": minutes, "wall_s": wall, "peak_rss_kb": rss, "captions": out}))
"""


def run(minutes: float, segment_sec: float) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(minutes), str(segment_sec)], capture_output=True,
                          text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"bench child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--long", type=float, default=60.0)
    ap.add_argument("--short", type=float, default=6.0)
    ap.add_argument("--segment-sec", type=float, default=30.0)
    a = ap.parse_args()
    short, long = run(a.short, a.segment_sec), run(a.long, a.segment_sec)
    for r in (short, long):
        print(f"{r['minutes']:g} min: wall {r['wall_s']:.1f} s, peak RSS {r['peak_rss_kb'] / 1024:.0f} MB, "
              f"captions {r['captions']}")
    print(f"time ratio {long['wall_s'] / short['wall_s']:.2f} (length ratio {a.long / a.short:g}), "
          f"memory ratio {long['peak_rss_kb'] / short['peak_rss_kb']:.3f} (goal <= 1.2)")


if __name__ == "__main__":
    main()
