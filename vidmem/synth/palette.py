"""Named colours for shapes and backgrounds.

Shape colours are saturated and far apart so that CLIP frame features tell them apart; backgrounds are muted.
A (shape colour, background) pair is only used when the two are clearly distinct (`contrasts`).
"""
from __future__ import annotations

import numpy as np

# Shape colours (sRGB 0-255), in a fixed order: params select a subset by name.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (40, 175, 60),
    "blue": (45, 85, 235),
    "yellow": (245, 220, 35),
    "orange": (250, 135, 25),
    "purple": (145, 55, 205),
    "pink": (250, 120, 195),
    "cyan": (40, 210, 225),
}

# Backgrounds: a base colour; the renderer adds a gradient or vignette around it.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (18, 18, 20),
    "dark grey": (70, 70, 74),
    "light grey": (190, 190, 186),
    "white": (242, 242, 238),
    "navy": (22, 30, 72),
    "beige": (222, 206, 172),
}

# Minimum Euclidean RGB distance between a shape colour and its background.
MIN_CONTRAST = 130.0


def contrasts(colour: str, background: str) -> bool:
    a = np.asarray(COLOURS[colour], dtype=np.float64)
    b = np.asarray(BACKGROUNDS[background], dtype=np.float64)
    return float(np.linalg.norm(a - b)) >= MIN_CONTRAST
