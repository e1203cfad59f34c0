"""Open the report in headless Chromium (Debian's `chromium` package; `make install` installs it): load it,
collect console messages, take a screenshot and measure it. The tests use it; so can a user:

    python -m vidmem.report.browser reports/index.html --screenshot reports/screenshot.png

prints whether the page loaded, its script-error count, its sections, any console message, and the
screenshot's pixel spread (a blank page has none).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vidmem.common import UserError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-first-run",
    "--disable-extensions",
    "--mute-audio",
    "--enable-logging=stderr",
    "--v=0",
)


def chromium() -> str:
    for name in CANDIDATES:
        if path := shutil.which(name):
            return path
    raise UserError("chromium not found; run `make install` (it installs Debian's chromium package)")


@dataclass
class Page:
    dom: str
    console: list[str]  # every console message the page logged (errors, CSP refusals, ...)
    body: dict[str, str]  # the <body> element's attributes after load


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="vidmem-chromium-") as profile:
        cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise UserError(f"chromium failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc


def console_messages(stderr: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r":CONSOLE(?:\(\d+\))?(?::\d+)?\] (.*)", stderr)]


def load(
    html: Path, png: Path | None = None, width: int = 1280, height: int = 2400, timeout: float = 60
) -> Page:
    """The page's DOM after its load event (`--dump-dom`), its console messages and <body> attributes; with
    `png`, the same run also writes a screenshot of the top `width`×`height` pixels there."""
    shot = []
    if png is not None:
        png = Path(png).resolve()
        png.parent.mkdir(parents=True, exist_ok=True)
        png.unlink(missing_ok=True)
        shot = [f"--screenshot={png}", f"--window-size={width},{height}"]
    proc = _run(["--dump-dom", *shot, Path(html).resolve().as_uri()], timeout)
    if png is not None and not png.is_file():
        raise UserError(f"chromium wrote no screenshot to {png}")
    m = re.search(r"<body([^>]*)>", proc.stdout)
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1))) if m else {}
    return Page(proc.stdout, console_messages(proc.stderr), attrs)


def pixel_spread(png: Path) -> tuple[float, int]:
    """(standard deviation of the grey levels, number of distinct colours): both ~0 for a blank page."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB"))
    grey = rgb.mean(axis=2)
    colours = len(np.unique(rgb.reshape(-1, 3)[:: max(1, rgb.size // 3 // 200_000)], axis=0))
    return float(grey.std()), colours


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vidmem.report.browser", description=__doc__.split("\n\n")[0])
    ap.add_argument("html", type=Path, nargs="?", default=Path("reports/index.html"))
    ap.add_argument("--screenshot", type=Path, help="write a PNG of the top of the page here")
    ap.add_argument("--size", default="1280x2400", help="window WIDTHxHEIGHT for the screenshot")
    args = ap.parse_args(argv)
    try:
        if not args.html.is_file():
            raise UserError(f"{args.html}: not found (run `dvc repro report`)")
        w, h = (int(x) for x in args.size.lower().split("x"))
        page = load(args.html, args.screenshot, w, h)
        print(
            f"{args.html}: loaded={page.body.get('data-report') == 'loaded'} "
            f"script errors={page.body.get('data-errors')} sections={page.body.get('data-sections')}"
        )
        for msg in page.console:
            print(f"console: {msg}")
        if args.screenshot:
            std, colours = pixel_spread(args.screenshot)
            print(f"{args.screenshot}: {w}x{h}, grey-level std {std:.1f}, {colours} colours")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if page.body.get("data-report") == "loaded" and not page.console else 1


if __name__ == "__main__":
    sys.exit(main())
