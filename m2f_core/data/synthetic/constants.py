"""What the synthetic scenes contain: the classes (names, dataset ids, colours, hue bands) and size limits.

Why a module of its own: the class list is shared by the scene generator, the dataset writer and
the built-in model (``m2f_core/data/classes/synthetic.json`` is a copy of ``CATEGORIES``), and the
size limits are agreed on by the shapes, the scene and the command line.
"""

from __future__ import annotations

THING_NAMES = ("disc", "box", "triangle", "star", "ring", "bar")
STUFF_NAMES = ("sky", "grass", "water", "brick wall", "road")

# Dataset ids 1..11: things first, then stuff. The contiguous class index is ``id - 1``.
CATEGORIES: list[dict] = [
    {"id": 1, "name": "disc", "isthing": True, "color": [220, 20, 60]},
    {"id": 2, "name": "box", "isthing": True, "color": [255, 140, 0]},
    {"id": 3, "name": "triangle", "isthing": True, "color": [240, 220, 30]},
    {"id": 4, "name": "star", "isthing": True, "color": [160, 40, 220]},
    {"id": 5, "name": "ring", "isthing": True, "color": [0, 200, 200]},
    {"id": 6, "name": "bar", "isthing": True, "color": [255, 60, 170]},
    {"id": 7, "name": "sky", "isthing": False, "color": [135, 190, 250]},
    {"id": 8, "name": "grass", "isthing": False, "color": [70, 170, 70]},
    {"id": 9, "name": "water", "isthing": False, "color": [30, 80, 170]},
    {"id": 10, "name": "brick wall", "isthing": False, "color": [170, 85, 55]},
    {"id": 11, "name": "road", "isthing": False, "color": [115, 115, 115]},
]
CLASS_INDEX = {c["name"]: i for i, c in enumerate(CATEGORIES)}  # name -> contiguous index

MIN_AREA = 16  # every segment has at least this many pixels
STUFF_MIN_AREA = 64  # a stuff class shows at least this many pixels or is given to its neighbours
MIN_VISIBLE_FRACTION = 0.1  # an instance must show at least this share of its in-image area
# Each thing class has its own hue band, as real object classes have typical colours: shape alone,
# under random colours and textures, was not learnt by the small model in a CPU budget (v2, v3a)
THING_HUES = {name: i / len(THING_NAMES) for i, name in enumerate(THING_NAMES)}
THING_HUE_BAND = 0.04  # +- hue around the class's (gaps of 0.087 between classes)
SMALL_FRACTION = 0.12  # share of things drawn 10-20 px wide (at 256 px); the others 36 px to half the scene
DEFAULT_SIZE = (256, 256)
JPEG_QUALITY = 92
MIN_SIDE, MAX_SIDE = 32, 4096
SHAPE_MIN_SIZE = {"disc": 8.0, "box": 8.0, "triangle": 10.0, "star": 14.0, "ring": 12.0, "bar": 14.0}
DRAW_SUBPIXELS = 16  # cv2 drawing with 4 fractional bits
