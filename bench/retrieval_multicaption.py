"""Retrieval with more test queries: meanP and EMCL per seed on the default test split (one JSFUSION caption
per video) and on all five MSRVTT_data.json captions of the same 20 test videos (multi-caption, 100 queries).

    PYTHONPATH=. python -m bench.retrieval_multicaption      # from the repository root, after the stores exist

Each seed (0, 1, 2 via families.retrieval.seed) trains as `stages.train` does (into temporary folders; the
repository's checkpoints are untouched). The extra sentences get text features from the tuned CLIP exactly as
`extract@text` computes them (checked against the store where it has them). Prints per seed and the ratio
EMCL / meanP of the mean 5-caption text→video R@1; writes bench/out/retrieval_multicaption.json.
An accuracy side-experiment, not a timing benchmark: it shows what the suggested ingest change would give.
"""
import json, sys, tempfile, logging, copy
import numpy as np, torch, yaml
torch.set_num_threads(1)
logging.basicConfig(level=logging.WARNING)
from stages.dispatch import task_for
from vidmem.paths import Paths
from vidmem.manifest import Manifest, Caption
from vidmem.store import FeatureStore
from vidmem.training import fit, load_checkpoint
from models.encoders.clip import ClipConfig, build_clip
from models.encoders.extract import TextExtractor
from models.retrieval.data import StoredTexts, StoredFrames

paths = Paths()
d = json.load(open("data/raw/synth/annotations/msrvtt/MSRVTT_data.json"))
split = {v["video_id"]: v["split"] for v in d["videos"]}
test = [s for s in d["sentences"] if split[s["video_id"]] == "test"]
clip = build_clip(ClipConfig(model="vidmem-tiny", pretrained=str(paths.clip_checkpoint), resize_mode="squash"))
sents = list(dict.fromkeys(s["caption"] for s in test))
with torch.no_grad():
    feats = TextExtractor(clip, 32, 32).compute_many(sents)
store = FeatureStore(paths.store("text"))
for s, f in zip(sents, feats):  # the recomputed features equal the stored ones where the store has them
    if s in store:
        assert np.allclose(f["sentence"].astype(np.float32), store.get(s, "sentence").astype(np.float32), atol=2e-3), s
texts = StoredTexts.from_arrays({s: f["tokens"][0, :32].astype(np.float32) for s, f in zip(sents, feats)},
                                {s: f["sentence"][0].astype(np.float32) for s, f in zip(sents, feats)},
                                {s: int(min(int(f["n_tokens"][0]), 32)) for s, f in zip(sents, feats)})
base = Manifest.read(paths.manifest, tables=("videos", "captions"))
multi = copy.deepcopy(base)
multi.captions = [c for c in multi.captions if c.split != "test"] + [
    Caption(f"msrvtt:test5/{s['sen_id']}", s["video_id"], "test", s["caption"]) for s in test]
params = yaml.safe_load(open("params.yaml"))
out = {}
for seed in (0, 1, 2):
    for name in ("meanp", "emcl"):
        p = copy.deepcopy(params); p["families"]["retrieval"]["seed"] = seed
        task = task_for(name, p, paths)
        ck = tempfile.mkdtemp()
        fit(task, ck, device="cpu", progress=False)
        model = task.restore(load_checkpoint(ck + "/best.pt"))
        one = task.evaluate(task.predict(model, "test"), "test")
        task._manifest = multi; task._splits.pop("test", None)
        vids = task.split("test").videos
        task._loaded["test"] = (texts, StoredFrames(FeatureStore(paths.store("clip")), vids, task.config.max_frames))
        five = task.evaluate(task.predict(model, "test"), "test")
        out[f"{name}/{seed}"] = {"test1": one, "test5": five}
        print(name, seed, "1-cap t2v R1", one["t2v"]["R1"], "| 5-cap t2v", {k: round(five["t2v"][k], 2) for k in ("R1", "R5", "MedianR", "MeanR", "queries")},
              "v2t", {k: round(five["v2t"][k], 2) for k in ("R1", "R5", "MeanR", "queries")}, flush=True)
r1 = {m: np.mean([out[f"{m}/{s}"]["test5"]["t2v"]["R1"] for s in (0, 1, 2)]) for m in ("meanp", "emcl")}
print(f"5-caption t2v R@1 mean: meanp {r1['meanp']:.2f}, emcl {r1['emcl']:.2f}; ratio {r1['emcl'] / r1['meanp']:.3f}")
from pathlib import Path
Path("bench/out").mkdir(parents=True, exist_ok=True)
json.dump(out, open("bench/out/retrieval_multicaption.json", "w"), indent=1)
