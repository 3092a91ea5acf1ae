"""SimNSD scenes: sampled, drawn, captioned and turned into the features the encoding model reads.

A scene is a background (street, grass, water, indoor), one to three objects of distinct COCO categories,
each with a colour, a size and a position, and at most one non-COCO scenery item (tree, house, cloud) that
captions may mention but COCO's instance annotations do not hold. Each category has its own silhouette,
drawn with PIL at twice the output size and downsampled, so that a small CNN or ViT can tell them apart
at 64 x 64.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

VOCABULARY = ("person", "bicycle", "car", "airplane", "bus", "boat", "bird", "cat", "dog", "horse", "cow",
              "umbrella", "chair", "clock")
# Words captions use for each category; all are synonyms in CHAIR's list, so caption_objects() maps them back.
SYNONYMS = {
    "person": ("person", "man", "woman", "child"), "bicycle": ("bicycle", "bike"),
    "car": ("car", "automobile", "sedan"), "airplane": ("airplane", "plane", "jet"), "bus": ("bus",),
    "boat": ("boat", "sailboat", "ship"), "bird": ("bird", "pigeon", "duck"), "cat": ("cat", "kitten"),
    "dog": ("dog", "puppy"), "horse": ("horse", "pony"), "cow": ("cow", "calf"), "umbrella": ("umbrella",),
    "chair": ("chair",), "clock": ("clock",),
}
COLOURS = {"red": (210, 40, 40), "blue": (40, 80, 215), "green": (40, 160, 60), "yellow": (240, 205, 40),
           "white": (245, 245, 245), "black": (30, 30, 30), "brown": (125, 80, 40), "purple": (135, 60, 175)}
SIZES = ("small", "large")
SIZE_FRACTION = {"small": 0.30, "large": 0.48}
POSITIONS = {"left": (0.25, 0.58), "right": (0.75, 0.58), "top": (0.5, 0.26), "bottom": (0.5, 0.78),
             "centre": (0.5, 0.55)}
BACKGROUNDS = ("street", "grass", "water", "indoor")
SCENERY = ("tree", "house", "cloud")
SCENERY_BY_BACKGROUND = {"street": ("tree", "house", "cloud"), "grass": ("tree", "house", "cloud"),
                         "water": ("cloud", "tree"), "indoor": ()}
# Mild co-occurrence priors: a background makes some categories three times as likely.
LIKELY = {"street": ("person", "car", "bus", "bicycle", "umbrella"),
          "grass": ("dog", "horse", "cow", "person", "bird"),
          "water": ("boat", "bird", "airplane", "person"),
          "indoor": ("cat", "dog", "chair", "clock", "person", "umbrella")}
NUM_OBJECTS_P = (0.3, 0.45, 0.25)
PIXEL_GRID = 6  # low-level features: the image averaged down to 6 x 6 x RGB

_BG_SHORT = {"street": ("on the street", "on a city street", "on the road", "in the street"),
             "grass": ("on the grass", "in a field", "in a grassy field", "on a lawn"),
             "water": ("on the water", "on a lake", "by the water", "in the water"),
             "indoor": ("in a room", "indoors", "in a living room", "inside a room")}
_BG_FINE = {"street": "on a grey street", "grass": "on green grass", "water": "on blue water",
            "indoor": "in a beige room"}
_SCENERY_FINE = {"tree": "with a tree in the background", "house": "with a house in the background",
                 "cloud": "under a white cloud"}
_SCENERY_SHORT = {"tree": "near a tree", "house": "in front of a house", "cloud": "under a cloudy sky"}
_POSITION_FINE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
                  "centre": "in the centre"}


@dataclass
class SceneObject:
    category: str
    colour: str
    size: str
    position: str
    bbox: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # COCO (x, y, w, h) in pixels


@dataclass
class Scene:
    background: str
    objects: list[SceneObject]
    scenery: str | None = None
    brightness: float = 1.0
    jitter: list[tuple[float, float, float]] = field(default_factory=list)  # per object (dx, dy, scale)

    def to_dict(self) -> dict:
        return asdict(self)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def sample_scene(rng: np.random.Generator, image_size: int) -> Scene:
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    n = int(rng.choice(3, p=NUM_OBJECTS_P)) + 1
    weights = np.array([3.0 if c in LIKELY[background] else 1.0 for c in VOCABULARY])
    categories = rng.choice(len(VOCABULARY), size=n, replace=False, p=weights / weights.sum())
    positions = rng.choice(len(POSITIONS), size=n, replace=False)
    objects, jitter = [], []
    for c, p in zip(categories, positions):
        obj = SceneObject(category=VOCABULARY[c], colour=list(COLOURS)[rng.integers(len(COLOURS))],
                          size=SIZES[int(rng.random() < 0.45)], position=list(POSITIONS)[p])
        dx, dy, scale = rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04), rng.uniform(0.9, 1.1)
        cx, cy = POSITIONS[obj.position]
        side = SIZE_FRACTION[obj.size] * scale * image_size
        x0 = float(np.clip((cx + dx) * image_size - side / 2, 0, image_size - side))
        y0 = float(np.clip((cy + dy) * image_size - side / 2, 0, image_size - side))
        obj.bbox = (round(x0, 2), round(y0, 2), round(side, 2), round(side, 2))
        objects.append(obj)
        jitter.append((round(dx, 4), round(dy, 4), round(scale, 4)))
    options = SCENERY_BY_BACKGROUND[background]
    scenery = options[rng.integers(len(options))] if options and rng.random() < 0.5 else None
    return Scene(background, objects, scenery, brightness=round(float(rng.uniform(0.9, 1.1)), 4), jitter=jitter)


# --- drawing ---------------------------------------------------------------------------------------------

class _Box:
    """Maps unit coordinates of a glyph's square box to pixels."""

    def __init__(self, draw: ImageDraw.ImageDraw, x0: float, y0: float, side: float, fill, outline):
        self.d, self.x0, self.y0, self.s, self.fill, self.outline = draw, x0, y0, side, fill, outline
        self.w = max(1, round(side / 40))

    def p(self, x, y):
        return (self.x0 + x * self.s, self.y0 + y * self.s)

    def ellipse(self, x0, y0, x1, y1, fill=None):
        self.d.ellipse([self.p(x0, y0), self.p(x1, y1)], fill=fill or self.fill, outline=self.outline, width=self.w)

    def rect(self, x0, y0, x1, y1, fill=None):
        self.d.rectangle([self.p(x0, y0), self.p(x1, y1)], fill=fill or self.fill, outline=self.outline, width=self.w)

    def poly(self, pts, fill=None):
        self.d.polygon([self.p(x, y) for x, y in pts], fill=fill or self.fill, outline=self.outline, width=self.w)

    def line(self, pts, width=0.06, fill=None):
        self.d.line([self.p(x, y) for x, y in pts], fill=fill or self.fill, width=max(1, round(width * self.s)))


_DARK, _SKIN, _GLASS, _TYRE = (35, 35, 35), (230, 190, 150), (190, 225, 245), (20, 20, 20)


def _person(b):
    b.line([(0.42, 0.6), (0.36, 0.97)], 0.09, _DARK); b.line([(0.58, 0.6), (0.64, 0.97)], 0.09, _DARK)
    b.line([(0.36, 0.32), (0.16, 0.58)], 0.07, _SKIN); b.line([(0.64, 0.32), (0.84, 0.58)], 0.07, _SKIN)
    b.rect(0.34, 0.27, 0.66, 0.63); b.ellipse(0.38, 0.03, 0.62, 0.27, fill=_SKIN)


def _bicycle(b):
    b.d.ellipse([b.p(0.03, 0.48), b.p(0.45, 0.9)], outline=_TYRE, width=max(1, round(0.06 * b.s)))
    b.d.ellipse([b.p(0.55, 0.48), b.p(0.97, 0.9)], outline=_TYRE, width=max(1, round(0.06 * b.s)))
    b.line([(0.24, 0.69), (0.45, 0.4), (0.72, 0.4), (0.76, 0.69), (0.5, 0.69), (0.24, 0.69)], 0.06)
    b.line([(0.5, 0.69), (0.42, 0.3)], 0.06); b.line([(0.34, 0.28), (0.5, 0.28)], 0.06, _DARK)
    b.line([(0.72, 0.4), (0.7, 0.25), (0.8, 0.22)], 0.05, _DARK)


def _car(b):
    b.poly([(0.24, 0.46), (0.34, 0.22), (0.7, 0.22), (0.82, 0.46)])
    b.poly([(0.37, 0.44), (0.42, 0.28), (0.51, 0.28), (0.51, 0.44)], fill=_GLASS)
    b.poly([(0.55, 0.44), (0.55, 0.28), (0.66, 0.28), (0.74, 0.44)], fill=_GLASS)
    b.rect(0.04, 0.44, 0.96, 0.74)
    b.ellipse(0.14, 0.63, 0.36, 0.85, fill=_TYRE); b.ellipse(0.64, 0.63, 0.86, 0.85, fill=_TYRE)


def _airplane(b):
    b.poly([(0.42, 0.5), (0.62, 0.5), (0.36, 0.96), (0.26, 0.96)])
    b.poly([(0.42, 0.5), (0.62, 0.5), (0.36, 0.04), (0.26, 0.04)])
    b.poly([(0.04, 0.5), (0.16, 0.5), (0.06, 0.2), (0.01, 0.2)])
    b.ellipse(0.02, 0.41, 0.98, 0.59); b.ellipse(0.8, 0.44, 0.9, 0.5, fill=_GLASS)


def _bus(b):
    b.rect(0.02, 0.12, 0.98, 0.8)
    for i in range(5):
        x = 0.07 + i * 0.18
        b.rect(x, 0.22, x + 0.13, 0.42, fill=_GLASS)
    b.rect(0.84, 0.48, 0.95, 0.78, fill=_DARK)
    b.ellipse(0.12, 0.7, 0.32, 0.9, fill=_TYRE); b.ellipse(0.62, 0.7, 0.82, 0.9, fill=_TYRE)


def _boat(b):
    b.line([(0.48, 0.06), (0.48, 0.62)], 0.05, _DARK)
    b.poly([(0.52, 0.08), (0.52, 0.56), (0.88, 0.56)], fill=(250, 250, 250))
    b.poly([(0.44, 0.14), (0.44, 0.56), (0.14, 0.56)], fill=(230, 230, 230))
    b.poly([(0.02, 0.6), (0.98, 0.6), (0.8, 0.86), (0.2, 0.86)])


def _bird(b):
    b.poly([(0.3, 0.55), (0.04, 0.42), (0.08, 0.68)])
    b.ellipse(0.22, 0.4, 0.74, 0.72)
    b.line([(0.44, 0.72), (0.42, 0.92)], 0.04, _DARK); b.line([(0.56, 0.72), (0.58, 0.92)], 0.04, _DARK)
    b.ellipse(0.6, 0.22, 0.86, 0.48); b.poly([(0.84, 0.3), (0.98, 0.36), (0.84, 0.42)], fill=(240, 170, 30))
    b.poly([(0.34, 0.5), (0.5, 0.1), (0.62, 0.52)])


def _cat(b):
    b.line([(0.22, 0.62), (0.08, 0.45), (0.12, 0.16)], 0.07)
    for x in (0.3, 0.42, 0.56, 0.66):
        b.line([(x, 0.7), (x, 0.92)], 0.07)
    b.ellipse(0.2, 0.46, 0.74, 0.78)
    b.poly([(0.6, 0.26), (0.64, 0.06), (0.72, 0.22)]); b.poly([(0.76, 0.22), (0.84, 0.06), (0.88, 0.26)])
    b.ellipse(0.58, 0.18, 0.92, 0.5)
    b.ellipse(0.66, 0.28, 0.71, 0.33, fill=(120, 200, 60)); b.ellipse(0.79, 0.28, 0.84, 0.33, fill=(120, 200, 60))


def _dog(b):
    b.line([(0.18, 0.42), (0.04, 0.24)], 0.07)
    for x in (0.24, 0.34, 0.6, 0.7):
        b.line([(x, 0.6), (x, 0.95)], 0.08)
    b.ellipse(0.14, 0.34, 0.8, 0.66)
    b.ellipse(0.64, 0.14, 0.96, 0.44); b.ellipse(0.86, 0.3, 1.0, 0.4, fill=_DARK)
    b.poly([(0.66, 0.18), (0.72, 0.14), (0.7, 0.46), (0.62, 0.42)], fill=_DARK)


def _horse(b):
    for x in (0.22, 0.32, 0.62, 0.72):
        b.line([(x, 0.5), (x, 0.98)], 0.07)
    b.line([(0.14, 0.36), (0.04, 0.7)], 0.06, _DARK)
    b.ellipse(0.12, 0.28, 0.8, 0.58)
    b.poly([(0.64, 0.36), (0.74, 0.08), (0.86, 0.12), (0.78, 0.42)])
    b.poly([(0.74, 0.06), (0.98, 0.18), (0.96, 0.28), (0.8, 0.24)])
    b.line([(0.72, 0.1), (0.64, 0.34)], 0.05, _DARK)


def _cow(b):
    for x in (0.24, 0.34, 0.64, 0.74):
        b.line([(x, 0.6), (x, 0.92)], 0.09)
    b.rect(0.2, 0.3, 0.84, 0.64)
    spot = (245, 245, 245) if b.fill == COLOURS["black"] else (25, 25, 25)
    b.ellipse(0.32, 0.36, 0.46, 0.5, fill=spot); b.ellipse(0.58, 0.44, 0.72, 0.58, fill=spot)
    b.rect(0.02, 0.24, 0.24, 0.5); b.ellipse(0.03, 0.42, 0.2, 0.56, fill=(240, 170, 170))
    b.line([(0.05, 0.24), (0.02, 0.12)], 0.04, (235, 235, 220)); b.line([(0.21, 0.24), (0.24, 0.12)], 0.04, (235, 235, 220))


def _umbrella(b):
    b.line([(0.5, 0.5), (0.5, 0.86)], 0.05, _DARK)
    b.d.arc([b.p(0.5, 0.76), b.p(0.66, 0.94)], 0, 180, fill=_DARK, width=max(1, round(0.05 * b.s)))
    b.d.pieslice([b.p(0.04, 0.1), b.p(0.96, 0.9)], 180, 360, fill=b.fill, outline=b.outline, width=b.w)
    b.line([(0.5, 0.1), (0.5, 0.04)], 0.04, _DARK)


def _chair(b):
    b.rect(0.22, 0.04, 0.32, 0.58); b.rect(0.22, 0.5, 0.8, 0.6)
    b.line([(0.26, 0.6), (0.26, 0.96)], 0.07); b.line([(0.76, 0.6), (0.76, 0.96)], 0.07)


def _clock(b):
    b.ellipse(0.06, 0.06, 0.94, 0.94)
    b.ellipse(0.16, 0.16, 0.84, 0.84, fill=(250, 250, 245))
    for a in np.linspace(0, 2 * np.pi, 12, endpoint=False):
        b.line([(0.5 + 0.28 * np.cos(a), 0.5 + 0.28 * np.sin(a)), (0.5 + 0.32 * np.cos(a), 0.5 + 0.32 * np.sin(a))], 0.03, _DARK)
    b.line([(0.5, 0.5), (0.5, 0.26)], 0.05, _DARK); b.line([(0.5, 0.5), (0.68, 0.56)], 0.05, _DARK)


GLYPHS = {"person": _person, "bicycle": _bicycle, "car": _car, "airplane": _airplane, "bus": _bus, "boat": _boat,
          "bird": _bird, "cat": _cat, "dog": _dog, "horse": _horse, "cow": _cow, "umbrella": _umbrella,
          "chair": _chair, "clock": _clock}
assert set(GLYPHS) == set(VOCABULARY)


def _background(d: ImageDraw.ImageDraw, kind: str, s: int):
    if kind == "street":
        d.rectangle([0, 0, s, s], fill=(150, 150, 155)); d.rectangle([0, int(0.62 * s), s, s], fill=(95, 95, 100))
        for x in range(0, s, s // 6):
            d.rectangle([x, int(0.8 * s), x + s // 12, int(0.82 * s)], fill=(235, 235, 235))
    elif kind == "grass":
        d.rectangle([0, 0, s, s], fill=(170, 210, 240)); d.rectangle([0, int(0.32 * s), s, s], fill=(95, 165, 75))
    elif kind == "water":
        d.rectangle([0, 0, s, s], fill=(185, 215, 240)); d.rectangle([0, int(0.32 * s), s, s], fill=(45, 105, 185))
        for y in np.arange(0.42, 1.0, 0.12):
            d.line([(0, int(y * s)), (s, int(y * s))], fill=(90, 150, 215), width=max(1, s // 64))
    elif kind == "indoor":
        d.rectangle([0, 0, s, s], fill=(225, 205, 170)); d.rectangle([0, int(0.68 * s), s, s], fill=(150, 105, 65))
    else:
        raise ValueError(kind)


def _scenery(d: ImageDraw.ImageDraw, kind: str, s: int):
    if kind == "tree":
        d.rectangle([int(0.07 * s), int(0.2 * s), int(0.11 * s), int(0.42 * s)], fill=(100, 65, 30))
        d.ellipse([int(0.0 * s), int(0.04 * s), int(0.18 * s), int(0.26 * s)], fill=(30, 110, 40))
    elif kind == "house":
        d.rectangle([int(0.82 * s), int(0.16 * s), int(0.99 * s), int(0.36 * s)], fill=(200, 170, 130))
        d.polygon([(int(0.8 * s), int(0.17 * s)), (int(0.905 * s), int(0.04 * s)), (int(1.0 * s), int(0.17 * s))], fill=(150, 50, 40))
    elif kind == "cloud":
        for x0, y0, x1, y1 in ((0.02, 0.05, 0.14, 0.15), (0.08, 0.02, 0.22, 0.15), (0.16, 0.05, 0.28, 0.15)):
            d.ellipse([int(x0 * s), int(y0 * s), int(x1 * s), int(y1 * s)], fill=(252, 252, 252))
    else:
        raise ValueError(kind)


def draw_scene(scene: Scene, image_size: int, oversample: int = 2) -> np.ndarray:
    """Render a scene as uint8 (image_size, image_size, 3)."""
    s = image_size * oversample
    img = Image.new("RGB", (s, s))
    d = ImageDraw.Draw(img)
    _background(d, scene.background, s)
    if scene.scenery:
        _scenery(d, scene.scenery, s)
    # Large objects first so that small ones in front stay visible.
    for obj in sorted(scene.objects, key=lambda o: -o.bbox[2]):
        fill = COLOURS[obj.colour]
        outline = (20, 20, 20) if sum(fill) > 300 else (235, 235, 235)
        x, y, side, _ = (v * oversample for v in obj.bbox)
        GLYPHS[obj.category](_Box(d, x, y, side, fill, outline))
    img = img.resize((image_size, image_size), Image.Resampling.BOX)
    arr = np.asarray(img, dtype=np.float32) * scene.brightness
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8)


# --- captions --------------------------------------------------------------------------------------------

def _relation(a: SceneObject, b: SceneObject) -> str:
    (ax, ay), (bx, by) = POSITIONS[a.position], POSITIONS[b.position]
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


def _coloured(obj: SceneObject, word: str) -> str:
    """'red car', but 'person in red' (a person's colour is their clothing)."""
    return f"{word} in {obj.colour}" if obj.category == "person" else f"{obj.colour} {word}"


def _describe(obj: SceneObject) -> str:
    return f"{article(obj.size)} {obj.size} {_coloured(obj, obj.category)}"


def fine_caption(scene: Scene) -> str:
    """One fine-grained caption naming every object with its size, colour and place, and the setting."""
    objs = sorted(scene.objects, key=lambda o: list(POSITIONS).index(o.position))
    if len(objs) == 1:
        pos = objs[0].position
        where = {"centre": "in the centre of", "top": "at the top of", "bottom": "at the bottom of",
                 "left": "on the left of", "right": "on the right of"}[pos]
        text = f"{_describe(objs[0])} {where} the scene, {_BG_FINE[scene.background]}"
    elif len(objs) == 2:
        text = f"{_describe(objs[0])} {_relation(objs[0], objs[1])} {_describe(objs[1])} {_BG_FINE[scene.background]}"
    else:
        parts = [f"{_describe(o)} {_POSITION_FINE[o.position]}" for o in objs]
        text = f"{parts[0]}, {parts[1]} and {parts[2]}, {_BG_FINE[scene.background]}"
    if scene.scenery:
        text += f" {_SCENERY_FINE[scene.scenery]}"
    return text


def coco_captions(scene: Scene, rng: np.random.Generator, n: int = 5) -> list[str]:
    """``n`` short COCO-like captions with varied templates and synonyms; some omit an object."""

    def name(obj):
        syn = SYNONYMS[obj.category]
        return syn[rng.integers(len(syn))]

    def a(word):
        return f"{article(word)} {word}"

    def bg():
        opts = _BG_SHORT[scene.background]
        return opts[rng.integers(len(opts))]

    objs = list(scene.objects)
    out: list[str] = []
    for attempt in range(40):
        rng.shuffle(objs)
        o = [name(x) for x in objs]
        col = [_coloured(x, w) for x, w in zip(objs, o)]
        if len(objs) == 1:
            templates = [f"{a(o[0])} {bg()}", f"{a(col[0])} {bg()}", f"there is {a(o[0])} {bg()}",
                         f"a picture of {a(o[0])}", f"{a(o[0])} {'close up' if objs[0].size == 'large' else 'in the distance'}",
                         f"{a(col[0])}"]
        elif len(objs) == 2:
            templates = [f"{a(o[0])} next to {a(o[1])}", f"{a(o[0])} and {a(o[1])} {bg()}",
                         f"{a(col[0])} near {a(o[1])}", f"there is {a(o[0])} and {a(col[1])} {bg()}",
                         f"a picture of {a(o[0])} with {a(o[1])}", f"{a(o[0])} {bg()}"]
        else:
            templates = [f"{a(o[0])}, {a(o[1])} and {a(o[2])}", f"{a(o[0])} with {a(o[1])} and {a(o[2])} {bg()}",
                         f"{a(col[0])} and {a(o[1])} {bg()}", f"{a(o[0])} next to {a(o[1])} and {a(o[2])}",
                         f"there are {a(o[0])}, {a(o[1])} and {a(col[2])} {bg()}"]
        text = templates[rng.integers(len(templates))]
        if scene.scenery and rng.random() < 0.3:
            text += f" {_SCENERY_SHORT[scene.scenery]}"
        text = text[0].upper() + text[1:] + "."
        if text not in out:
            out.append(text)
        if len(out) == n:
            break
    while len(out) < n:  # a scene with few wordings: repeat, as COCO sometimes does
        out.append(out[len(out) % max(1, len(out))])
    return out


# --- encoding-model features -----------------------------------------------------------------------------

def feature_blocks() -> list[tuple[str, list[str]]]:
    """Feature names, grouped in blocks (the encoding model weights each block separately)."""
    cols, pos = list(COLOURS), list(POSITIONS)
    return [
        ("object", list(VOCABULARY)),
        ("object_position", [f"{c}@{p}" for c in VOCABULARY for p in pos]),
        ("object_colour", [f"{c}:{k}" for c in VOCABULARY for k in cols]),
        ("object_size", [f"{c}:{z}" for c in VOCABULARY for z in SIZES]),
        ("colour_position", [f"{k}@{p}" for k in cols for p in pos]),
        ("background", list(BACKGROUNDS)),
        ("scenery", list(SCENERY)),
        ("pixels", [f"px{y},{x},{ch}" for y in range(PIXEL_GRID) for x in range(PIXEL_GRID) for ch in "rgb"]),
    ]


def scene_features(scene: Scene, image: np.ndarray) -> np.ndarray:
    """Raw (unstandardised) feature vector of one scene and its rendered image, float32 (F,)."""
    cols, pos = list(COLOURS), list(POSITIONS)
    k, p, c = len(VOCABULARY), len(POSITIONS), len(COLOURS)
    obj, obj_pos, obj_col = np.zeros(k), np.zeros((k, p)), np.zeros((k, c))
    obj_size, col_pos = np.zeros((k, 2)), np.zeros((c, p))
    for o in scene.objects:
        i, j, m = VOCABULARY.index(o.category), pos.index(o.position), cols.index(o.colour)
        obj[i] = 1; obj_pos[i, j] = 1; obj_col[i, m] = 1; obj_size[i, SIZES.index(o.size)] = 1; col_pos[m, j] = 1
    bg = np.zeros(len(BACKGROUNDS)); bg[BACKGROUNDS.index(scene.background)] = 1
    sc = np.zeros(len(SCENERY))
    if scene.scenery:
        sc[SCENERY.index(scene.scenery)] = 1
    h = image.shape[0] // PIXEL_GRID
    pix = image[: h * PIXEL_GRID, : h * PIXEL_GRID].reshape(PIXEL_GRID, h, PIXEL_GRID, h, 3).mean((1, 3)) / 255.0
    return np.concatenate([obj, obj_pos.ravel(), obj_col.ravel(), obj_size.ravel(), col_pos.ravel(), bg, sc,
                           pix.ravel()]).astype(np.float32)
