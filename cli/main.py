"""The `vidmem` command (console script, and `python -m vidmem`): the pipeline's models on your own videos.

    vidmem caption PATH… [--out DIR]           dense captions (CM2) + the ReCap hierarchy for long videos
    vidmem index FOLDER [--out INDEX]          build or update a searchable index (only new/changed videos)
    vidmem search INDEX "a sentence"           ranked videos (EMCL) and moments in them (MRNet)
    vidmem search INDEX --audio query.wav      the same for a spoken query (the speech grounding model)

User errors (a missing checkpoint or index, a bad argument) are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

# Decoding runs in a thread beside torch's OpenMP workers: idle workers sleep instead of spinning on the core
# the decoder needs (as stages/extract.py sets it). Before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from vidmem.common import UserError, bound_heap_growth, setup_logging  # noqa: E402


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {n}")
    return n


def _seconds(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds ≥ 0, got {text}")
    return x


def _project_args(p: argparse.ArgumentParser, models: Sequence[str]) -> None:
    g = p.add_argument_group("trained project and checkpoints (default: the pipeline's paths)")
    g.add_argument(
        "--project",
        metavar="DIR",
        help="a vidmem checkout trained by `make repro` (default: the current folder when it is one, "
        "else the repository of this installation)",
    )
    g.add_argument(
        "--clip-checkpoint",
        dest="clip",
        metavar="PT",
        help="tuned CLIP towers (default: data/checkpoints/encoders/clip/best.pt)",
    )
    for key in models:
        g.add_argument(
            f"--{key.replace('_', '-')}",
            dest=key,
            metavar="PT",
            help=f"the {key} checkpoint (default: data/checkpoints/<family>/<model>/best.pt)",
        )


def parser() -> argparse.ArgumentParser:
    from cli.caption import DEFAULT_HIERARCHY_FROM

    top = argparse.ArgumentParser(
        prog="vidmem", description="The pipeline's trained models on your own videos."
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="{caption,index,search}")

    c = sub.add_parser(
        "caption",
        help="dense captions, and the ReCap hierarchy of long videos",
        description="Compress, extract and caption videos: ActivityNet-format JSON, Ego4D-HCap-"
        "style levels and an HTML page in OUT.",
    )
    c.add_argument(
        "paths", nargs="+", metavar="PATH", help="video files and/or folders (searched recursively)"
    )
    c.add_argument(
        "--out", default="vidmem-captions", metavar="DIR", help="output folder (default: %(default)s)"
    )
    c.add_argument(
        "--hierarchy-from",
        type=_seconds,
        default=DEFAULT_HIERARCHY_FROM,
        metavar="SECONDS",
        help="videos at least this long also get the ReCap hierarchy: clip captions, segment "
        "descriptions, a summary (default: %(default)g s)",
    )
    c.add_argument("--no-hierarchy", action="store_true", help="dense captions only")
    c.add_argument("--vocab", metavar="JSON", help="caption vocabulary (default: data/manifest/vocab.json)")
    c.add_argument("--bank", metavar="ZARR", help="CM2's memory bank (default: data/bank.zarr)")
    _project_args(c, ("cm2", "recap_clip", "recap_segment", "recap_video"))

    i = sub.add_parser(
        "index",
        help="build or update a searchable index of a folder",
        description="Index FOLDER's videos (recursively): only new or changed files (path, size, "
        "mtime) are processed, removed ones are dropped, a killed run resumes.",
    )
    i.add_argument("folder", metavar="FOLDER")
    i.add_argument(
        "--out", default="vidmem-index", metavar="INDEX", help="index folder (default: %(default)s)"
    )
    _project_args(i, ())

    s = sub.add_parser("search", help="ranked videos and moments for a sentence or a spoken query")
    s.add_argument("index", metavar="INDEX", help="a folder made by `vidmem index`")
    s.add_argument("sentence", nargs="?", help="the query sentence")
    s.add_argument("--audio", metavar="WAV", help="a spoken query instead of a sentence (16 kHz WAV)")
    s.add_argument("--top", type=_positive, default=5, help="videos to list (default: %(default)s)")
    s.add_argument("--moments", type=_positive, default=3, help="moments per video (default: %(default)s)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _project_args(s, ("emcl", "mrnet", "mrnet_speech"))
    return top


def run_index(args) -> int:
    from cli.index import describe_failures, update_index
    from cli.project import Project, relative

    if not os.path.isdir(args.folder):
        raise UserError(f"{args.folder}: not a folder")
    project = Project.open(args.project, overrides=vars(args))
    res = update_index(args.out, [args.folder], project)
    n = len(res.catalog.videos)
    print(
        f"{relative(args.out)}: {n} video(s) indexed — {len(res.added)} new, {len(res.changed)} changed, "
        f"{len(res.unchanged)} unchanged, {len(res.removed)} removed"
        + (f", {len(res.failed)} failed" if res.failed else "")
    )

    if res.failed:
        print("not indexed:")
        print("\n".join(describe_failures(res.failed)))
    print(f'search it: vidmem search {relative(args.out)} "a sentence"')
    return 0 if n else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(os.environ.get("VIDMEM_LOG", "WARNING"))
    bound_heap_growth()
    try:
        if args.command == "caption":
            from cli.caption import run
        elif args.command == "index":
            run = run_index
        else:
            from cli.search import run
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console()
