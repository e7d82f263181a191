"""Drawing for the procedural scenes of :mod:`mmcl.data.scenes`: what each shape, colour and
background looks like, where objects go, and ``render(scene, image_size) -> PIL.Image``.

Everything here is a pure function of the scene (its attributes and ``layout_seed``) and the
image size, so a scene is reproducible from its identity alone. Objects are drawn with
``PIL.ImageDraw`` on a canvas ``SUPERSAMPLE`` times larger and box-filtered down
(``Image.reduce``), which antialiases the edges at little cost.

Geometry is in image-relative units (1.0 = image side), so a scene looks the same at 32x32 and
at 224x224, only sharper.
"""

from __future__ import annotations

import functools
import math
import random
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from mmcl.data.scenes_identity import Scene

__all__ = [
    "BACKGROUND_RGB",
    "COLOUR_RGB",
    "POSITION_CENTRES",
    "SHAPE_POLYGONS",
    "SIZE_DIAMETERS",
    "SUPERSAMPLE",
    "TEXTURES",
    "object_layout",
    "render",
]

Point = tuple[float, float]

# Object colours: saturated hues, far apart from each other and from every background (which
# are all achromatic), so "the object's colour" is never ambiguous and never the background's.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 25),
    "green": (35, 165, 55),
    "cyan": (25, 200, 215),
    "blue": (35, 70, 225),
    "purple": (135, 50, 195),
    "pink": (245, 125, 190),
}
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "light grey": (195, 195, 195),
    "dark grey": (75, 75, 75),
    "black": (12, 12, 12),
}
# Per-scene brightness jitter of the object colour, in 0-255 units: enough to vary the
# images, far too little to move a colour towards a neighbouring name.
COLOUR_JITTER = 12

# Bounding diameter of one object, as a fraction of the image side. "small" objects are
# about 8 px across at 32x32, the smallest at which the eight outlines stay distinct.
SIZE_DIAMETERS: dict[str, float] = {"small": 0.25, "large": 0.38}
# How far an object's centre may move from its anchor, per axis (fraction of the image).
# Large objects move less, so that four of them in a 2x2 grid never overlap.
CENTRE_JITTER: dict[str, float] = {"small": 0.07, "large": 0.02}
ROTATION_JITTER_DEGREES = 12.0  # square and diamond are 45 degrees apart: keep well below

# Anchor of a single object, per position label. Left/right/top/bottom anchors sit a quarter
# of the image from the edge; even with jitter a "left" object's centre stays >= 0.1 left
# of any "center" object's centre.
POSITION_CENTRES: dict[str, Point] = {
    "left": (0.26, 0.5),
    "right": (0.74, 0.5),
    "top": (0.5, 0.26),
    "bottom": (0.5, 0.74),
    "center": (0.5, 0.5),
}
# Several objects occupy distinct cells of a 2x2 grid (which cells is part of the layout).
# Two large neighbours keep a gap of >= 0.05 (1.5 px at 32x32) even with worst-case jitter
# and rotation, so objects stay separate and countable.
GRID_CELLS: tuple[Point, ...] = ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))

SUPERSAMPLE = 4
# Ring stroke as a fraction of its radius: a small ring at 32x32 is 8 px across with a
# 1.8 px stroke and a 4.4 px hole; thinner strokes fade to a darker shade of their colour.
RING_WIDTH = 0.45


def _normalised(points: list[Point], scale: float = 1.0) -> tuple[Point, ...]:
    """Centre a polygon on its bounding box and scale its larger half-extent to ``scale``."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    half = max(max(xs) - min(xs), max(ys) - min(ys)) / 2
    return tuple(((x - cx) * scale / half, (y - cy) * scale / half) for x, y in points)


def _regular(n: int, phase_degrees: float = -90.0) -> list[Point]:
    """Vertices of a regular n-gon on the unit circle, the first one at ``phase_degrees``."""
    step = 2 * math.pi / n
    phase = math.radians(phase_degrees)
    return [(math.cos(phase + k * step), math.sin(phase + k * step)) for k in range(n)]


def _star(points: int = 5, inner: float = 0.47) -> list[Point]:
    # A fat star (inner radius ~0.47): thin spikes vanish at 8 px, leaving a pentagon blob.
    tips = _regular(points)
    notches = _regular(points, -90.0 + 180.0 / points)
    outline: list[Point] = []
    for tip, (x, y) in zip(tips, notches, strict=True):
        outline += [tip, (x * inner, y * inner)]
    return outline


def _cross(arm: float = 0.36) -> list[Point]:
    # A plus sign: the top arm's three corners, turned by 0, 90, 180 and 270 degrees.
    a = arm
    outline = [(-a, -1.0), (a, -1.0), (a, -a)]
    for _ in range(3):
        outline += [(-y, x) for x, y in outline[-3:]]
    return outline


def _heart(n: int = 36) -> list[Point]:
    # The classic parametric heart, y flipped for image coordinates (y grows downwards).
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x, -y))
    return pts


# Unit outlines (larger half-extent 1, centred), before per-object rotation and scaling.
# "circle" and "ring" are drawn as ellipses, not polygons. The square is shrunk a little so
# that "large" looks equally large for every shape. A hexagon or pentagon would be the
# obvious next shape, but at 8 px (a small object at 32x32) either is a circle.
SHAPE_POLYGONS: dict[str, tuple[Point, ...] | None] = {
    "circle": None,
    "square": _normalised(_regular(4, 45.0), 0.86),
    "triangle": _normalised(_regular(3)),
    "star": _normalised(_star(), 1.05),
    "ring": None,
    "cross": _normalised(_cross()),
    "diamond": _normalised([(0, -1), (0.66, 0), (0, 1), (-0.66, 0)]),
    "heart": _normalised(_heart()),
}


def object_layout(scene: Scene) -> tuple[list[tuple[float, float, float]], random.Random]:
    """Centres and rotations ``(x, y, degrees)`` of the scene's objects, image-relative.

    Also returns the layout RNG, positioned after the objects, for the remaining nuisances
    (colour shade, background texture), so that all of them follow from ``layout_seed``.
    """
    rng = random.Random(scene.layout_seed)
    if scene.count == 1:
        anchors = [POSITION_CENTRES[scene.position or "center"]]
    else:
        anchors = rng.sample(GRID_CELLS, scene.count)
    jitter = CENTRE_JITTER[scene.size]
    objects = [
        (
            x + rng.uniform(-jitter, jitter),
            y + rng.uniform(-jitter, jitter),
            rng.uniform(-ROTATION_JITTER_DEGREES, ROTATION_JITTER_DEGREES),
        )
        for x, y in anchors
    ]
    return objects, rng


# Background textures: plain, faint noise, or a faint linear ramp; drawn with a small fixed
# set of variants that are cached per image size, so texturing costs one image copy.
_NOISE_VARIANTS = 4
_RAMP_DIRECTIONS: tuple[Point, ...] = ((1, 0), (0, 1), (0.7, 0.7), (-0.7, 0.7))
TEXTURES = (
    ("plain",)
    + tuple(f"noise{k}" for k in range(_NOISE_VARIANTS))
    + tuple(f"ramp{k}" for k in range(len(_RAMP_DIRECTIONS)))
)
_NOISE_AMPLITUDE = 10.0
_RAMP_AMPLITUDE = 18.0


@functools.lru_cache(maxsize=256)
def _background(name: str, texture: str, image_size: int, supersample: int) -> Image.Image:
    base = np.array(BACKGROUND_RGB[name], dtype=np.float32)
    canvas = np.broadcast_to(base, (image_size, image_size, 3)).copy()
    if texture.startswith("noise"):
        # Grey noise at the output resolution, upsampled by repetition below, so every output
        # pixel gets one noise value (not averaged away by the final box filter).
        noise_rng = np.random.default_rng(int(texture[5:]))
        noise = noise_rng.uniform(-_NOISE_AMPLITUDE, _NOISE_AMPLITUDE, (image_size, image_size))
        canvas += noise[..., None]
    elif texture.startswith("ramp"):
        dx, dy = _RAMP_DIRECTIONS[int(texture[4:])]
        coords = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size - 0.5
        ramp = dx * coords[None, :] + dy * coords[:, None]
        canvas += (_RAMP_AMPLITUDE * 2 * ramp)[..., None]
    pixels = np.clip(canvas, 0, 255).round().astype(np.uint8)
    pixels = pixels.repeat(supersample, axis=0).repeat(supersample, axis=1)
    return Image.fromarray(pixels, "RGB")


def _jittered_colour(name: str, rng: random.Random) -> tuple[int, int, int]:
    shift = rng.randint(-COLOUR_JITTER, COLOUR_JITTER)
    r, g, b = (min(255, max(0, c + shift)) for c in COLOUR_RGB[name])
    return r, g, b


def render(scene: Scene, image_size: int = 32, supersample: int = SUPERSAMPLE) -> Image.Image:
    """Draw ``scene`` as an ``image_size`` x ``image_size`` RGB image.

    >>> from mmcl.data.scenes import Scene
    >>> scene = Scene("star", "red", "large", 2, None, "white", layout_seed=7)
    >>> render(scene, 32).size
    (32, 32)
    """
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    objects, rng = object_layout(scene)
    fill = _jittered_colour(scene.colour, rng)
    texture = rng.choice(TEXTURES)

    side = image_size * supersample
    canvas = _background(scene.background, texture, image_size, supersample).copy()
    draw = ImageDraw.Draw(canvas)
    radius = SIZE_DIAMETERS[scene.size] / 2 * side
    outline = SHAPE_POLYGONS[scene.shape]
    for x, y, degrees in objects:
        cx, cy = x * side, y * side
        if outline is None:
            box = (cx - radius, cy - radius, cx + radius, cy + radius)
            if scene.shape == "ring":
                draw.ellipse(box, outline=fill, width=round(RING_WIDTH * radius))
            else:
                draw.ellipse(box, fill=fill)
            continue
        cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        points = [
            (cx + radius * (px * cos - py * sin), cy + radius * (px * sin + py * cos))
            for px, py in outline
        ]
        draw.polygon(points, fill=fill)
    return canvas.reduce(supersample) if supersample > 1 else canvas
