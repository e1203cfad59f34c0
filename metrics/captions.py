"""Caption scores shared by every family: PTB tokenisation, BLEU-1..4, METEOR 1.5, ROUGE-L and CIDEr-D.

Published caption numbers come from the COCO caption toolkit (pycocoevalcap), so we use its official parts:
the Stanford PTBTokenizer 3.4.1 and METEOR 1.5 jars it ships, and its pure-Python BLEU, ROUGE-L and CIDEr-D
scorers. What we add is the robustness its wrappers lack:

- Tokenisation runs the same jar with the same flags, but from a private temporary file (not inside
  site-packages), with a timeout, and checks that one line came back per caption (a stray line break would
  otherwise shift every caption after it onto the wrong key). `-encoding utf-8` is added so non-ASCII text
  does not depend on the locale's default charset (identical output under a UTF-8 locale).
- METEOR talks to one long-lived JVM per Python process (`shared_meteor()`), because a JVM start costs about
  5 s and the dense evaluator needs thousands of scores. Captions are cleaned of line breaks and the `|||`
  field separator first (either one breaks the line protocol). Every answer is awaited with a timeout; a JVM
  that died or hung is killed and restarted once, and a second failure raises `MeteorError` with the reason
  and the JVM's last stderr lines, never a hang or `could not convert string to float: ''`.
- Many scores travel in one conversation: `Meteor.score_groups` sends every distinct (hypothesis,
  references) pair once for its statistics, then one EVAL line per group, so a whole dense evaluation costs
  two round trips.

SPICE is left out: its constructor downloads Stanford CoreNLP at run time.
"""
from __future__ import annotations

import atexit
import collections
import logging
import math
import queue
import subprocess
import tempfile
import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

from vidmem.common import UserError

log = logging.getLogger(__name__)

_PACKAGE = Path(__import__("pycocoevalcap").__path__[0])
TOKENIZER_JAR = _PACKAGE / "tokenizer" / "stanford-corenlp-3.4.1.jar"
METEOR_JAR = _PACKAGE / "meteor" / "meteor-1.5.jar"

METRICS = ("Bleu", "METEOR", "ROUGE_L", "CIDEr")
BLEU_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")
_PUNCTUATION = frozenset(PUNCTUATIONS)

Key = Hashable
Item = tuple[str, Sequence[str]]  # (hypothesis, references)


class CaptionEvalError(RuntimeError):
    """The Java side of caption scoring failed (no Java runtime, tokenizer error, dead or hung JVM)."""


class MeteorError(CaptionEvalError):
    """METEOR could not score: the JVM failed twice in a row (it died, hung, or answered garbage)."""


# ------------------------------------------------------------------------------------------------------- text
def one_line(text: str) -> str:
    """Join every kind of line break into spaces (the Java tools read one caption per line)."""
    return " ".join(text.splitlines())


def clean_caption(text: str) -> str:
    """What METEOR may see: one line, no `|||` (its field separator), single spaces."""
    return " ".join(one_line(text).replace("|||", " ").split())


def ptb_tokenize(captions: Sequence[str], *, java: str = "java", timeout_s: float = 600.0) -> list[str]:
    """Stanford PTBTokenizer (`-preserveLines -lowerCase`), punctuation tokens dropped, as pycocoevalcap does.

    Empty captions stay empty without a trip to Java (the jar's treatment of a trailing empty line is
    ambiguous). Raises `CaptionEvalError` when Java is missing, fails, times out or loses lines.
    """
    lines = [one_line(c).strip() for c in captions]
    todo = [i for i, line in enumerate(lines) if line]
    out = [""] * len(lines)
    if not todo:
        return out
    with tempfile.TemporaryDirectory(prefix="vidmem-ptb-") as tmp:
        src = Path(tmp) / "captions.txt"
        src.write_text("\n".join(lines[i] for i in todo), encoding="utf-8")
        cmd = [java, "-cp", str(TOKENIZER_JAR), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", "-encoding", "utf-8", str(src)]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
        except FileNotFoundError:
            raise CaptionEvalError(f"PTB tokenizer: Java runtime '{java}' not found (run `make` to install "
                                   "a JRE)") from None
        except subprocess.TimeoutExpired:
            raise CaptionEvalError(f"PTB tokenizer: no result within {timeout_s:.0f} s for "
                                   f"{len(todo)} captions") from None
    stderr = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        raise CaptionEvalError(f"PTB tokenizer exited with status {proc.returncode}: {stderr[-500:]}")
    got = proc.stdout.decode("utf-8", "replace").split("\n")
    if len(got) > len(todo) and not any(got[len(todo):]):
        got = got[: len(todo)]
    if len(got) != len(todo):
        raise CaptionEvalError(f"PTB tokenizer returned {len(got)} lines for {len(todo)} captions")
    for i, line in zip(todo, got):
        out[i] = " ".join(w for w in line.rstrip().split(" ") if w and w not in _PUNCTUATION)
    return out


def tokenize_captions(captions: Mapping[Key, Sequence[str]], **kwargs) -> dict[Key, list[str]]:
    """Tokenise a {key: [caption, ...]} mapping in one Java call, keeping keys and order."""
    flat = [c for caps in captions.values() for c in caps]
    tokens = iter(ptb_tokenize(flat, **kwargs))
    return {k: [next(tokens) for _ in caps] for k, caps in captions.items()}


# ----------------------------------------------------------------------------------------------------- METEOR
class _Failure(Exception):
    """One failed conversation with the JVM (internal: triggers the single restart)."""


class Meteor:
    """METEOR 1.5 (`-l en -norm`, the COCO settings) in one reusable JVM, with timeouts and one restart.

    `timeout_s` bounds the wait for each answer line once the JVM is up; `start_timeout_s` bounds the first
    answer after a start (JVM start plus loading the paraphrase table). Safe to share between threads.
    """

    def __init__(self, *, java: str = "java", jar: str | Path = METEOR_JAR, heap: str = "2G",
                 timeout_s: float = 60.0, start_timeout_s: float = 180.0, eval_chunk: int = 500):
        self.cmd = [java, "-jar", f"-Xmx{heap}", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"]
        self.cwd = Path(jar).parent
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.eval_chunk = eval_chunk  # segments per EVAL line when only per-segment scores are needed
        self.starts = 0  # JVM starts so far (a restart after a failure counts)
        self._lock = threading.RLock()
        self._proc: subprocess.Popen | None = None
        self._answers: queue.Queue[bytes | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._fresh = True
        self._threads: list[threading.Thread] = []

    # -- process management
    @property
    def pid(self) -> int | None:
        """The JVM's process id (None before the first call or after `close`)."""
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        self._stderr.clear()
        try:
            proc = subprocess.Popen(self.cmd, cwd=self.cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        except OSError as e:
            raise MeteorError(f"cannot start the METEOR JVM ({self.cmd[0]} -jar {self.cmd[3]}): {e}") \
                from None
        answers: queue.Queue[bytes | None] = queue.Queue()

        def pump_stdout() -> None:
            for line in proc.stdout:
                answers.put(line)
            answers.put(None)  # end of file: the JVM exited

        def pump_stderr() -> None:
            for line in proc.stderr:
                self._stderr.append(line.decode("utf-8", "replace").rstrip())

        self._threads = [threading.Thread(target=f, daemon=True, name=f"meteor-{f.__name__}")
                         for f in (pump_stdout, pump_stderr)]
        for t in self._threads:
            t.start()
        self._proc, self._answers, self._fresh = proc, answers, True
        self.starts += 1
        log.debug("METEOR JVM started (pid %d)", proc.pid)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait()
        for t in self._threads:
            t.join(timeout=5)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass

    def close(self) -> None:
        """Stop the JVM; a later call starts a new one."""
        with self._lock:
            self._kill()

    def __enter__(self) -> Meteor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._kill()
        except Exception:  # interpreter shutdown: nothing useful left to do
            pass

    def _stderr_tail(self) -> str:
        tail = " | ".join(line for line in self._stderr if line)
        return tail[-800:] if tail else "(no stderr)"

    # -- the line protocol
    def _exchange(self, lines: Sequence[str], counts: Sequence[int]) -> list[list[str]]:
        """Send `lines`; read `counts[i]` answer lines for line i. Raises `_Failure` on death or silence."""
        if self._proc is not None and self._proc.poll() is not None:
            log.warning("METEOR JVM had exited (status %s); starting a new one", self._proc.returncode)
            self._kill()
        if self._proc is None:
            self._start()
        proc, answers = self._proc, self._answers
        payload = "".join(f"{line}\n" for line in lines).encode("utf-8")
        write_error: list[BaseException] = []

        def write() -> None:
            try:
                proc.stdin.write(payload)
                proc.stdin.flush()
            except (OSError, ValueError) as e:  # broken pipe / closed by a kill
                write_error.append(e)

        writer = threading.Thread(target=write, daemon=True, name="meteor-writer")
        writer.start()
        out: list[list[str]] = []
        for n in counts:
            group = []
            for _ in range(n):
                wait = self.start_timeout_s if self._fresh else self.timeout_s
                try:
                    raw = answers.get(timeout=wait)
                except queue.Empty:
                    raise _Failure(f"no answer within {wait:g} s (JVM hung)") from None
                if raw is None:
                    proc.wait()
                    self._threads[-1].join(timeout=2)  # let the stderr pump catch the JVM's last words
                    why = f": {write_error[0]}" if write_error else ""
                    raise _Failure(f"the JVM exited with status {proc.returncode}{why}")
                self._fresh = False
                group.append(raw.decode("utf-8", "replace").strip())
            out.append(group)
        writer.join(timeout=self.timeout_s)
        return out

    def _converse(self, lines: Sequence[str], counts: Sequence[int], parse) -> list:
        """One conversation with a single restart on failure; `parse` turns answer groups into results."""
        if not lines:
            return []
        with self._lock:
            reason = ""
            for attempt in (1, 2):
                try:
                    return parse(self._exchange(lines, counts))
                except _Failure as e:
                    reason = f"{e}; stderr: {self._stderr_tail()}"
                    self._kill()
                    if attempt == 1:
                        log.warning("METEOR failed (%s); restarting the JVM once", reason)
            raise MeteorError(f"METEOR failed twice, giving up: {reason}")

    # -- public scoring API
    def stats(self, items: Sequence[Item]) -> list[str]:
        """METEOR sufficient statistics of each (hypothesis, references) pair (one SCORE line each)."""
        lines = []
        for hyp, refs in items:
            if isinstance(refs, str) or not refs:
                raise ValueError(f"METEOR needs a non-empty list of references, got {refs!r}")
            lines.append(" ||| ".join(["SCORE", *(clean_caption(r) for r in refs), clean_caption(hyp)]))

        def parse(groups: list[list[str]]) -> list[str]:
            out = [g[0] for g in groups]
            for s in out:
                if not s or not all(_is_float(x) for x in s.split()):
                    raise _Failure(f"unexpected METEOR statistics line {s!r}")
            return out

        return self._converse(lines, [1] * len(lines), parse)

    def evaluate(self, groups: Sequence[Sequence[str]]) -> list[tuple[float, list[float]]]:
        """Score groups of statistics lines: per group (aggregate score, per-segment scores)."""
        groups = [list(g) for g in groups]
        if any(not g for g in groups):
            raise ValueError("METEOR cannot evaluate an empty group")
        lines = [" ||| ".join(["EVAL", *g]) for g in groups]

        def parse(answers: list[list[str]]) -> list[tuple[float, list[float]]]:
            out = []
            for a in answers:
                try:
                    values = [float(x) for x in a]
                except ValueError:
                    raise _Failure(f"unexpected METEOR score line in {a!r}") from None
                out.append((values[-1], values[:-1]))
            return out

        return self._converse(lines, [len(g) + 1 for g in groups], parse)

    def score_groups(self, groups: Sequence[Sequence[Item]]) -> list[tuple[float, list[float]]]:
        """Independent METEOR corpora in two round trips: per group (aggregate, per-item scores).

        The aggregate is what pycocoevalcap's `Meteor.compute_score` returns for that group (METEOR over
        the summed statistics, not a mean of item scores); each item score does not depend on its group.
        """
        index: dict[tuple[str, tuple[str, ...]], int] = {}
        unique: list[Item] = []
        for group in groups:
            for hyp, refs in group:
                key = (hyp, tuple(refs))
                if key not in index:
                    index[key] = len(unique)
                    unique.append((hyp, tuple(refs)))
        stats = self.stats(unique)
        nonempty = [g for g in groups if g]
        results = iter(self.evaluate([[stats[index[(h, tuple(r))]] for h, r in g] for g in nonempty]))
        return [next(results) if g else (0.0, []) for g in groups]

    def segment_scores(self, items: Sequence[Item]) -> list[float]:
        """Per-item METEOR only (e.g. every (gt, prediction) pair of SODA), batched in chunks."""
        items = list(items)
        step = max(1, self.eval_chunk)
        chunks = [items[i:i + step] for i in range(0, len(items), step)]
        return [s for _, seg in self.score_groups(chunks) for s in seg]

    def score(self, items: Sequence[Item]) -> tuple[float, list[float]]:
        """One corpus: (aggregate METEOR, per-item METEOR), like pycocoevalcap's `compute_score`."""
        if not items:
            raise ValueError("METEOR needs at least one (hypothesis, references) pair")
        return self.score_groups([items])[0]


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_shared: Meteor | None = None
_shared_lock = threading.Lock()


def shared_meteor() -> Meteor:
    """The process-wide METEOR scorer (one JVM per Python process, started on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Meteor()
            atexit.register(_shared.close)
        return _shared


# ---------------------------------------------------------------------------------------------------- corpora
@dataclass
class CaptionScores:
    """Corpus scores (`corpus[metric]`) and per-key scores (`per_key[metric][key]`)."""

    corpus: dict[str, float] = field(default_factory=dict)
    per_key: dict[str, dict[Key, float]] = field(default_factory=dict)


def _check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        extra = " (SPICE needs a run-time download and is not offered)" if "SPICE" in unknown else ""
        raise ValueError(f"unknown caption metric(s) {unknown}; choose from {list(METRICS)}{extra}")
    return metrics


def _normalise(refs: Mapping[Key, Sequence[str]], preds: Mapping[Key, str | Sequence[str]],
               source: str) -> tuple[dict[Key, list[str]], dict[Key, list[str]]]:
    """Check keys and types; predictions become one-element lists (pycocoevalcap's shape)."""
    missing = [k for k in refs if k not in preds]
    extra = [k for k in preds if k not in refs]
    if missing or extra:
        what = f"no prediction for {missing[:5]}" if missing else f"no references for {extra[:5]}"
        raise UserError(f"{source}: predictions and references differ in keys: {what}")
    r: dict[Key, list[str]] = {}
    p: dict[Key, list[str]] = {}
    for k, caps in refs.items():
        if isinstance(caps, str) or not caps or not all(isinstance(c, str) for c in caps):
            raise UserError(f"{source}: key {k!r}: references must be a non-empty list of strings")
        r[k] = list(caps)
        pred = preds[k]
        if isinstance(pred, str):
            pred = [pred]
        if len(pred) != 1 or not isinstance(pred[0], str):
            raise UserError(f"{source}: key {k!r}: expected exactly one predicted caption, got {pred!r}")
        p[k] = list(pred)
    return r, p


def _cider(refs: dict[Key, list[str]], preds: dict[Key, list[str]]) -> tuple[float, list[float]]:
    """pycocoevalcap CIDEr-D (n=4, sigma=6); a corpus whose references hold no n-gram at all scores 0
    (pycocoevalcap would fail on an empty document-frequency table)."""
    if not any(r.split() for caps in refs.values() for r in caps):
        return 0.0, [0.0] * len(refs)
    score, scores = Cider().compute_score(refs, preds)
    return float(score), [float(s) for s in scores]


def score_corpora(corpora: Sequence[tuple[Mapping[Key, Sequence[str]], Mapping[Key, str | Sequence[str]]]],
                  metrics: Sequence[str] = METRICS, *, meteor: Meteor | None = None,
                  source: str = "captions") -> list[CaptionScores]:
    """Score independent corpora of already tokenised captions; all their METEOR work shares two JVM trips.

    Each corpus is (refs {key: [ref, ...]}, preds {key: pred}) and is scored exactly as pycocoevalcap scores
    one evaluation: BLEU over the corpus ("closest" reference length), METEOR over the summed statistics,
    ROUGE-L and CIDEr-D as the mean of per-key scores, CIDEr-D's IDF from this corpus's references.
    """
    metrics = _check_metrics(metrics)
    normal = [_normalise(r, p, source) for r, p in corpora]
    if any(not r for r, _ in normal):
        raise UserError(f"{source}: cannot score an empty set of captions")
    results = [CaptionScores() for _ in normal]
    if "METEOR" in metrics:
        meteor = meteor or shared_meteor()
        groups = [[(p[k][0], r[k]) for k in r] for r, p in normal]
        for res, (r, _), (agg, seg) in zip(results, normal, meteor.score_groups(groups)):
            res.corpus["METEOR"] = agg
            res.per_key["METEOR"] = dict(zip(r, seg))
    for res, (r, p) in zip(results, normal):
        keys = list(r)
        if "Bleu" in metrics:
            score, per = Bleu(4).compute_score(r, p, verbose=0)
            for n, name in enumerate(BLEU_KEYS):
                res.corpus[name] = float(score[n])
                res.per_key[name] = dict(zip(keys, map(float, per[n])))
        if "ROUGE_L" in metrics:
            score, per = Rouge().compute_score(r, p)
            res.corpus["ROUGE_L"] = float(score)
            res.per_key["ROUGE_L"] = dict(zip(keys, map(float, per)))
        if "CIDEr" in metrics:
            score, per = _cider(r, p)
            res.corpus["CIDEr"] = score
            res.per_key["CIDEr"] = dict(zip(keys, per))
        for name, value in res.corpus.items():
            if not math.isfinite(value):
                raise CaptionEvalError(f"{source}: {name} is not finite ({value})")
    order = [*BLEU_KEYS, "METEOR", "ROUGE_L", "CIDEr"]
    for res in results:
        res.corpus = {k: res.corpus[k] for k in order if k in res.corpus}
        res.per_key = {k: res.per_key[k] for k in order if k in res.per_key}
    return results


def score_captions_per_key(refs: Mapping[Key, Sequence[str]], preds: Mapping[Key, str | Sequence[str]],
                           metrics: Sequence[str] = METRICS, *, tokenize: bool = True,
                           meteor: Meteor | None = None, source: str = "captions") -> CaptionScores:
    """COCO-style caption evaluation of one corpus, with the per-key scores kept."""
    r, p = _normalise(refs, preds, source)
    if tokenize:  # one Java call for references and predictions together
        both = tokenize_captions({**{("ref", k): v for k, v in r.items()},
                                  **{("pred", k): v for k, v in p.items()}})
        r = {k: both[("ref", k)] for k in r}
        p = {k: both[("pred", k)] for k in p}
    return score_corpora([(r, p)], metrics, meteor=meteor, source=source)[0]


def score_captions(refs: Mapping[Key, Sequence[str]], preds: Mapping[Key, str | Sequence[str]],
                   metrics: Sequence[str] = METRICS, *, tokenize: bool = True, meteor: Meteor | None = None,
                   source: str = "captions") -> dict[str, float]:
    """COCO-style caption evaluation: {Bleu_1..4, METEOR, ROUGE_L, CIDEr} (those asked for) of one corpus.

    `refs` maps each key to its reference captions, `preds` to one predicted caption (a string or a
    one-element list). Raw captions are PTB-tokenised first unless `tokenize=False`.
    """
    scores = score_captions_per_key(refs, preds, metrics, tokenize=tokenize, meteor=meteor, source=source)
    return scores.corpus
