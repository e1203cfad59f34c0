"""All the text of one video, at every level the method families need, derived from its `VideoSpec`.

Short videos: dense event captions (one per event; two annotators for test videos), grounding queries (one per
event, with an espeak-ng voice each), whole-video retrieval captions and QA pairs. Long videos: a caption
every `clip_sec` seconds, a description of every `segment_sec` window and one summary, plus paraphrased
"predicted" versions of the clip captions and segment descriptions (the `*_pred` fields of Ego4D-HCap) and, for
train videos, pseudo-labels: descriptions over `pseudo_grids` more segment grids, shifted, and summaries of
every run of two or more segments short of the whole video (`pseudo_summaries`).
Only the test split draws held-out phrasings.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from vidmem.synth.config import SynthConfig
from vidmem.synth.grammar import (
    ACTION_ANSWER, ACTIVITY, ANSWER_TYPE, BACKDROP, CAPTION, CLIP_EMPTY, CLIP_NONE, CLIP_TWO, DIRECTION,
    QUERY, QUESTIONS, SEGMENT_NONE, SEGMENT_PREFIX, SUMMARY_OBJECT, SUMMARY_OPEN, VIDEO_CAPTION, Phraser,
    capitalise, join_list,
)
from vidmem.synth.motion import Timeline
from vidmem.synth.scene import Event, VideoSpec, video_rng

MIN_CLIP_OVERLAP = 0.25  # an event is in a clip caption when it covers this fraction of the clip


@dataclass
class VideoText:
    # short videos
    captions: list[list[str]] = field(default_factory=list)  # per annotator: one sentence per spec.events
    queries: list[str] = field(default_factory=list)  # one per spec.events
    voices: list[str] = field(default_factory=list)  # espeak-ng voice of each query
    retrieval: list[str] = field(default_factory=list)
    qa: list[dict[str, str]] = field(default_factory=list)  # {question, answer, answer_type}
    # long videos
    clips: list[tuple[float, float, str]] = field(default_factory=list)
    clips_pred: list[tuple[float, float, str]] = field(default_factory=list)
    segments: list[tuple[float, float, str]] = field(default_factory=list)
    segments_pred: list[str] = field(default_factory=list)
    segments_pseudo: list[tuple[float, float, str]] = field(default_factory=list)   # train split only
    summaries_pseudo: list[tuple[float, float, str]] = field(default_factory=list)  # train split only
    summary: str = ""

    def all_text(self) -> list[str]:
        out = [s for a in self.captions for s in a] + self.queries + self.retrieval
        out += [q["question"] for q in self.qa] + [q["answer"] for q in self.qa]
        out += [c for _, _, c in self.clips] + [c for _, _, c in self.segments]
        out += [c for _, _, c in self.clips_pred] + self.segments_pred
        out += [c for _, _, c in self.segments_pseudo + self.summaries_pseudo]
        return out + ([self.summary] if self.summary else [])


def annotate(cfg: SynthConfig, spec: VideoSpec) -> VideoText:
    rng = video_rng(cfg.seed, spec.long, spec.index, 2)
    held = cfg.text.heldout_prob if spec.split == "test" else 0.0
    ph = Phraser(rng, held)
    text = VideoText()
    if spec.long:
        text.clips = clip_captions(ph, spec, cfg.long.clip_sec)
        text.segments = segment_descriptions(ph, spec, cfg.long.segment_sec)
        text.summary = summary(ph, spec)
        pred = Phraser(rng)  # "model output": same content, other (training) wording
        text.clips_pred = clip_captions(pred, spec, cfg.long.clip_sec)
        text.segments_pred = [d for _, _, d in segment_descriptions(pred, spec, cfg.long.segment_sec)]
        if spec.split == "train":   # each from its own random stream: the text above is unchanged
            seg = Phraser(video_rng(cfg.seed, spec.long, spec.index, 4))
            text.segments_pseudo = pseudo_segments(seg, spec, cfg.long.segment_sec, cfg.long.pseudo_shifts)
            if cfg.long.pseudo_summaries:
                summ = Phraser(video_rng(cfg.seed, spec.long, spec.index, 5))
                text.summaries_pseudo = pseudo_summaries(summ, spec, cfg.long.segment_sec)
        return text
    n_annotators = 2 if spec.split == "test" else 1
    first = event_captions(ph, spec)
    text.captions = [first]
    for _ in range(1, n_annotators):
        text.captions.append(_differently(lambda: event_captions(ph, spec), first))
    text.queries = [query(ph, spec, e) for e in spec.events]
    voice_rng = video_rng(cfg.seed, spec.long, spec.index, 3)
    voices = cfg.speech.voices
    text.voices = [str(voices[int(voice_rng.integers(len(voices)))]) for _ in spec.events]
    text.retrieval = retrieval_captions(ph, spec, cfg.text.captions_per_video)
    text.qa = questions(ph, spec, cfg.text.qa_per_video)
    return text


def _differently(make, other: list[str], tries: int = 8) -> list[str]:
    """A second annotator: resample sentences that came out identical to the first annotator's."""
    out = make()
    for _ in range(tries):
        same = [i for i, (a, b) in enumerate(zip(out, other, strict=True)) if a == b]
        if not same:
            break
        again = make()
        for i in same:
            out[i] = again[i]
    return out


# ---------------------------------------------------------------------------------------------------- events
def _first_events(spec: VideoSpec) -> set[int]:
    seen, firsts = set(), set()
    for i, e in enumerate(spec.events):
        if e.obj not in seen:
            seen.add(e.obj)
            firsts.add(i)
    return firsts


def _clause(ph: Phraser, spec: VideoSpec, e: Event, definite: bool = True) -> tuple[str, str, str]:
    """(subject, verb phrase, -ing form) describing event e."""
    subj = ph.subject(e.before.colour, spec.objects[e.obj].shape, definite)
    v3, ing = ph.verb(e.kind, e.after.colour)
    return subj, v3, ing


def event_captions(ph: Phraser, spec: VideoSpec) -> list[str]:
    """ActivityNet-style: one sentence per event, first mentions sometimes indefinite."""
    firsts = _first_events(spec)
    out = []
    for i, e in enumerate(spec.events):
        definite = i not in firsts or ph.chance(0.5)
        s, v3, ing = _clause(ph, spec, e, definite)
        t = ph.pick(CAPTION)
        if i == 0 and t.startswith(("Then", "Next")):
            t = "{S} {v}."
        out.append(t.format(S=capitalise(s), s=s, v=v3, ing=ing))
    return out


def query(ph: Phraser, spec: VideoSpec, e: Event) -> str:
    """Charades-STA style: a lower-case sentence ending in a full stop."""
    s, v3, ing = _clause(ph, spec, e)
    return ph.pick(QUERY).format(s=s, v=v3, ing=ing)


# ---------------------------------------------------------------------------------------------------- video
def _object_list(ph: Phraser, spec: VideoSpec, at: float = 0.0) -> str:
    """Every shape, indefinite, in its colour at time `at`."""
    return join_list([ph.subject(_colour_at(spec, o, at), obj.shape, definite=False)
                      for o, obj in enumerate(spec.objects)])


def retrieval_captions(ph: Phraser, spec: VideoSpec, k: int) -> list[str]:
    """MSR-VTT style: lower case, no full stop; unique within the video when the grammar allows."""
    out: list[str] = []
    for _ in range(20 * k):
        if len(out) == k:
            break
        c = _retrieval_caption(ph, spec)
        if c not in out:
            out.append(c)
    while len(out) < k:  # a very plain video has few distinct captions
        out.append(_retrieval_caption(ph, spec))
    return out


def _retrieval_caption(ph: Phraser, spec: VideoSpec) -> str:
    template = ph.pick(VIDEO_CAPTION)
    if not spec.events and "{event" in template:
        template = VIDEO_CAPTION[0][0]
    fields = {"bg": spec.background, "backdrop": ph.pick(BACKDROP), "objects": _object_list(ph, spec)}
    n = len(spec.objects)
    fields["count"] = f"{ph.count(n)}" if n > 1 else "one"
    if n == 1:
        template = template.replace("{count} shapes", "{count} shape")
    if "{event" in template:
        e1 = spec.events[int(ph.rng.integers(len(spec.events)))]
        s, v3, _ = _clause(ph, spec, e1, definite=False)
        fields["event"] = f"{s} {v3}"
        others = [e for e in spec.events if e.obj != e1.obj] or [e for e in spec.events if e is not e1]
        if "{event2}" in template:
            if not others:
                template = "{event}"
            else:
                e2 = others[int(ph.rng.integers(len(others)))]
                s2, v32, _ = _clause(ph, spec, e2, definite=False)
                fields["event2"] = f"{s2} {v32}"
    return template.format(**fields)


def questions(ph: Phraser, spec: VideoSpec, k: int) -> list[dict[str, str]]:
    """MSRVTT-QA style: one-word answers from a closed set; only questions with a unique answer."""
    n = len(spec.objects)
    cands: list[tuple[str, dict[str, str], str]] = [("count", {}, ph.count(n))]
    worn: Counter = Counter()
    for o, obj in enumerate(spec.objects):
        worn.update({obj.initial.colour} | {e.after.colour for e in spec.object_events(o)})
    for o, obj in enumerate(spec.objects):
        evs = spec.object_events(o)
        shape = ph.noun(obj.shape)
        colour = obj.initial.colour
        recolours = [e for e in evs if e.kind == "recolour"]
        if not recolours:
            cands.append(("colour", {"shape": shape}, colour))
        else:
            cands.append(("colour_start", {"shape": shape}, colour))
            if len(recolours) == 1:
                cands.append(("new_colour", {"shape": shape}, recolours[0].after.colour))
        if worn[colour] == 1:
            cands.append(("shape", {"colour": colour}, obj.shape))
        ref = f"{colour} {shape}" if worn[colour] == 1 else shape
        moves = [e for e in evs if e.kind in DIRECTION]
        if len(moves) == 1:
            cands.append(("direction", {"ref": ref}, DIRECTION[moves[0].kind]))
        acts = [e for e in evs if e.kind != "still"]
        if len(acts) == 1 and len(evs) == 1:
            cands.append(("action", {"ref": ref}, ACTION_ANSWER[acts[0].kind]))
    order = ph.rng.permutation(len(cands))[:k]
    out = []
    for i in sorted(int(j) for j in order):
        kind, fields, answer = cands[i]
        out.append({
            "question": ph.pick(QUESTIONS[kind]).format(**fields),
            "answer": answer,
            "answer_type": ANSWER_TYPE.get(kind, "what"),
        })
    return out


# ---------------------------------------------------------------------------------------------------- long
def _windows(duration: float, step: float) -> list[tuple[float, float]]:
    out, k = [], 0
    while k * step < duration - 1e-9:
        out.append((round(k * step, 3), round(min((k + 1) * step, duration), 3)))
        k += 1
    return out


def clip_captions(ph: Phraser, spec: VideoSpec, clip_sec: float) -> list[tuple[float, float, str]]:
    timeline = Timeline(spec)
    out = []
    for s, e in _windows(spec.duration, clip_sec):
        active: dict[int, tuple[float, Event]] = {}
        for ev in spec.events:
            ov = min(e, ev.end) - max(s, ev.start)
            if ov >= MIN_CLIP_OVERLAP * (e - s) and ev.kind != "still" and ov > active.get(ev.obj, (0.0,))[0]:
                active[ev.obj] = (ov, ev)
        chosen = sorted(active.values(), key=lambda x: (-x[0], x[1].obj))[:2]
        chosen = sorted((ev for _, ev in chosen), key=lambda ev: (ev.start, ev.obj))
        parts = []
        for ev in chosen:
            subj, v3, _ = _clause(ph, spec, ev)
            parts.append(f"{subj} {v3}")
        if len(parts) == 2:
            text = ph.pick(CLIP_TWO).format(e1=parts[0], e2=parts[1])
        elif parts:
            text = parts[0]
        else:
            mid = (s + e) / 2
            visible = [o for o in range(len(spec.objects)) if timeline.look(o, mid).alpha > 0.5]
            if not visible:
                text = ph.pick(CLIP_EMPTY)
            elif len(visible) == 1:
                o = visible[0]
                colour = _colour_at(spec, o, mid)
                text = f"{ph.subject(colour, spec.objects[o].shape)} {ph.verb('still')[0]}"
            else:
                text = ph.pick(CLIP_NONE)
        out.append((s, e, text))
    return out


def _colour_at(spec: VideoSpec, obj: int, t: float) -> str:
    colour = spec.objects[obj].initial.colour
    for e in spec.object_events(obj):
        if e.end <= t:
            colour = e.after.colour
    return colour


def segment_descriptions(ph: Phraser, spec: VideoSpec, segment_sec: float) -> list[tuple[float, float, str]]:
    """One description per window of the fixed grid (the manual annotation)."""
    return [(s, e, describe_segment(ph, spec, s, e)) for s, e in _windows(spec.duration, segment_sec)]


def pseudo_windows(duration: float, segment_sec: float, shifts: tuple[float, ...]) -> list[tuple[float, float]]:
    """The segment grid moved by each shift: [0, shift), then `segment_sec` windows from `shift` on, the last one
    cut at the video's end (as the manual grid's last window is). Shifts lie strictly inside (0, segment_sec)."""
    out = []
    for shift in shifts:
        if shift >= duration - 1e-9:
            continue
        out.append((0.0, round(shift, 3)))
        out += [(round(shift + s, 3), round(shift + e, 3)) for s, e in _windows(duration - shift, segment_sec)]
    return out


def pseudo_segments(ph: Phraser, spec: VideoSpec, segment_sec: float,
                    shifts: tuple[float, ...]) -> list[tuple[float, float, str]]:
    """Extra train-split descriptions over shifted windows: what Ego4D-HCap's `segments_train_pseudo.pkl` adds
    (there an LLM describes the narrations of unannotated spans; here the same grammar describes the events)."""
    return [(s, e, describe_segment(ph, spec, s, e)) for s, e in pseudo_windows(spec.duration, segment_sec, shifts)]


def describe_segment(ph: Phraser, spec: VideoSpec, s: float, e: float) -> str:
    """Each object's events whose midpoint lies in [s, e), in order ("X moves left, grows and then spins.")."""
    mine = [ev for ev in spec.events if s <= (ev.start + ev.end) / 2 < e]
    sentences = []
    for o in sorted({ev.obj for ev in mine}, key=lambda o: min(ev.start for ev in mine if ev.obj == o)):
        evs = [ev for ev in mine if ev.obj == o]
        subj = ph.subject(evs[0].before.colour, spec.objects[o].shape)
        verbs = [ph.verb(ev.kind, ev.after.colour)[0] for ev in evs]
        if len(verbs) == 1:
            vp = verbs[0]
        else:
            vp = ", ".join(verbs[:-1]) + " and then " + verbs[-1]
        sentences.append(f"{capitalise(subj)} {vp}.")
    if not sentences:
        return ph.pick(SEGMENT_NONE)
    prefix = ph.pick(SEGMENT_PREFIX)
    if prefix:
        sentences[0] = prefix + sentences[0][0].lower() + sentences[0][1:]
    return " ".join(sentences)


def summary(ph: Phraser, spec: VideoSpec, start: float = 0.0, end: float = math.inf) -> str:
    """What happened overall in [start, end) (default: the whole video): the shapes as they are at `start`,
    then each shape's two most frequent activities among the events whose midpoint lies in the span."""
    n = len(spec.objects)
    objects = _object_list(ph, spec, start)
    opening = ph.pick(SUMMARY_OPEN).format(
        count=ph.count(n), shapes="shape" if n == 1 else "shapes", bg=spec.background,
        backdrop=ph.pick(BACKDROP), objects=objects, Objects=capitalise(objects),
    )
    sentences = [opening]
    for o, obj in enumerate(spec.objects):
        acts = Counter(ACTIVITY[e.kind] for e in spec.object_events(o)
                       if e.kind != "still" and start <= (e.start + e.end) / 2 < end)
        if not acts:
            continue
        top = [a for a, _ in sorted(acts.items(), key=lambda x: (-x[1], x[0]))[:2]]
        subj = ph.subject(_colour_at(spec, o, start), obj.shape)
        sentences.append(ph.pick(SUMMARY_OBJECT).format(S=capitalise(subj), s=subj, a=" and ".join(top)))
    return " ".join(sentences)


def pseudo_summary_spans(duration: float, segment_sec: float) -> list[tuple[float, float]]:
    """Every run of two or more consecutive manual segments short of the whole video (Ego4D-HCap summaries
    carry their own spans; a video may have several)."""
    grid = _windows(duration, segment_sec)
    return [(grid[i][0], grid[i + size - 1][1]) for size in range(2, len(grid)) for i in range(len(grid) - size + 1)]


def pseudo_summaries(ph: Phraser, spec: VideoSpec, segment_sec: float) -> list[tuple[float, float, str]]:
    return [(s, e, summary(ph, spec, s, e)) for s, e in pseudo_summary_spans(spec.duration, segment_sec)]
