"""Presets for the public datasets at paper scale: presets/<name>.yaml names the files a user must bring (and
where), the params that differ from the SynthVid defaults, and the DVC targets to reproduce.

    python -m vidmem.preset --list             # the presets
    python -m vidmem.preset activitynet_cm2    # merge its params into params.yaml, then list what is missing
    python -m vidmem.preset --check NAME       # only list the missing files (exit 1 if any)

Applying merges the preset's `params` into params.yaml key by key (mappings merge, lists and scalars replace;
the file's comments are kept) and prints the next command. `git diff params.yaml` shows the change and
`git checkout params.yaml` undoes it. Every later command is DVC's own (`dvc repro <target>`); `ingest` then
stops at the first missing annotation file or video with a one-line error naming it.
"""
from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vidmem.common import PARAMS_FILE, UserError, write_text

PRESETS = Path(__file__).resolve().parents[1] / "presets"


@dataclass
class Bring:
    path: str           # relative to the repository root; a trailing "/" marks a folder (it must hold files)
    what: str

    @property
    def folder(self) -> bool:
        return self.path.endswith("/")

    def present(self, root: Path) -> bool:
        p = root / self.path
        return p.is_dir() and any(p.iterdir()) if self.folder else p.is_file()


@dataclass
class Preset:
    name: str
    description: str
    targets: list[str]
    then: list[str]
    bring: list[Bring]
    params: dict[str, Any]


def names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def load(name: str) -> Preset:
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"no preset '{name}' (known: {', '.join(names())}; files in {PRESETS})")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    for key in ("description", "targets", "bring", "params"):
        if key not in (doc or {}):
            raise UserError(f"{path}: missing key '{key}'")
    bring = [Bring(str(b["path"]), str(b.get("what", ""))) for b in doc["bring"]]
    return Preset(name, str(doc["description"]), list(doc["targets"]), list(doc.get("then") or []), bring,
                  dict(doc["params"]))


def missing(preset: Preset, root: Path = Path(".")) -> list[Bring]:
    return [b for b in preset.bring if not b.present(root)]


def merge(base: Any, over: Mapping[str, Any]) -> None:
    """Merge `over` into the mapping `base` in place: mappings key by key, anything else replaces."""
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            merge(base[key], value)
        else:
            base[key] = _like(base.get(key), value)


def _like(old: Any, new: Any) -> Any:
    """`new` in place of the ruamel node `old`: a list replaces the old list's items inside the old node, so
    the comments after it (the next section's heading) stay; the comments between its old items go."""
    from ruamel.yaml.comments import CommentedSeq

    if not isinstance(old, CommentedSeq) or not isinstance(new, list):
        return new
    old.ca.items.clear()
    del old[:]
    old.extend(new)
    return old


def apply(preset: Preset, params_file: Path = PARAMS_FILE) -> None:
    """Write the preset's params into params.yaml, keeping the file's comments (ruamel round trip)."""
    from ruamel.yaml import YAML

    if not params_file.is_file():
        raise UserError(f"{params_file}: params file not found (run from the repository root)")
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096                     # no re-wrapping of long flow lists
    rt.indent(mapping=2, sequence=4, offset=2)
    doc = rt.load(params_file.read_text(encoding="utf-8"))
    # the preset's params as ruamel nodes too: numbers keep their spelling (5.0e-5, which PyYAML reads as a
    # float; 5e-05 it would read as a string) and flow mappings stay flow mappings
    merge(doc, rt.load((PRESETS / f"{preset.name}.yaml").read_text(encoding="utf-8"))["params"])
    buf = io.StringIO()
    rt.dump(doc, buf)
    write_text(params_file, buf.getvalue())


def make_folders(preset: Preset, root: Path = Path(".")) -> list[Path]:
    """Create the folders the files to bring go into (`ls` shows where each belongs); returns the new ones."""
    made = []
    for b in preset.bring:
        folder = root / b.path if b.folder else (root / b.path).parent
        if not folder.is_dir():
            folder.mkdir(parents=True)
            made.append(folder)
    return made


def report_missing(preset: Preset, root: Path = Path(".")) -> list[Bring]:
    gone = missing(preset, root)
    if gone:
        print(f"{preset.name}: {len(gone)} of {len(preset.bring)} files to bring are missing:")
        for b in gone:
            print(f"  missing {b.path}{'  (a folder of videos)' if b.folder else ''} — {b.what}")
    else:
        print(f"{preset.name}: all {len(preset.bring)} files to bring are in place")
    return gone


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vidmem.preset", description=__doc__.split("\n\n")[0])
    ap.add_argument("name", nargs="?", help="the preset (presets/<name>.yaml)")
    ap.add_argument("--list", action="store_true", help="list the presets")
    ap.add_argument("--check", action="store_true", help="only list the missing files")
    args = ap.parse_args(argv)
    try:
        if args.list or not args.name:
            for n in names():
                print(f"{n:18s} {load(n).description}")
            return 0
        preset = load(args.name)
        if not args.check:
            apply(preset)
            groups = ", ".join(preset.params)
            print(f"{PARAMS_FILE}: {preset.name} applied ({groups}); `git diff {PARAMS_FILE}` shows it")
            for folder in make_folders(preset):
                print(f"created {folder}/")
        gone = report_missing(preset)
        steps = [f"dvc repro {' '.join(preset.targets)}", *preset.then]
        print(("then: " if not gone else "once they are in place: ") + " && ".join(steps))
        return 1 if gone and args.check else 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
