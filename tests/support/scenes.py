"""Reference images the tests make themselves, so that no test needs a downloaded
dataset (only the tests of EvalRef-100 itself read its files).

Each scene is drawn deterministically from its name: a two-colour gradient background,
a few filled shapes, different per category, and a fine grain, so that images differ from each other
in colour, layout and structure, as real references do. The same name always gives the
same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Four categories, as in EvalRef-100; two scenes each.
CATEGORIES: dict[str, str] = {
    "object": "simple_objects",
    "scene": "natural_scenes",
    "portrait": "human_portraits",
    "complex": "complex_scenarios",
}
NAMES: tuple[str, ...] = tuple(f"{prefix}_{i}" for prefix in CATEGORIES for i in (1, 2))
SIZE = (96, 80)


def _rng(name: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big"))


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def scene(name: str, size: tuple[int, int] = SIZE) -> Image.Image:
    """The RGB image called `name` (any text), drawn at `size`."""
    rng = _rng(name)
    width, height = size
    top, bottom = _colour(rng), _colour(rng)
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / max(1, height - 1)
        draw.line([(0, y), (width, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    prefix = name.split("_", 1)[0]
    shapes = {"object": 1, "scene": 3, "portrait": 2, "complex": 7}.get(prefix, 4)
    for _ in range(shapes):
        x0, y0 = rng.randrange(width * 3 // 4), rng.randrange(height * 3 // 4)
        x1, y1 = x0 + rng.randrange(8, width // 2), y0 + rng.randrange(8, height // 2)
        if prefix == "portrait" or rng.random() < 0.4:
            draw.ellipse([x0, y0, x1, y1], fill=_colour(rng))
        else:
            draw.rectangle([x0, y0, x1, y1], fill=_colour(rng))
    if prefix == "scene":
        image = image.filter(ImageFilter.GaussianBlur(1.5))
    # Fine grain, as photographs have: no region is perfectly flat.
    grain = np.random.default_rng(rng.randrange(2**32)).integers(-12, 13, size=(height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8), "RGB")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def scene_png(name: str, size: tuple[int, int] = SIZE) -> bytes:
    return png(scene(name, size))


def write_dataset(folder: Path, names: tuple[str, ...] = NAMES) -> Path:
    """A dataset folder: one PNG per name and a MANIFEST.json in EvalRef-100's format."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for name in names:
        data = scene_png(name)
        (folder / f"{name}.png").write_bytes(data)
        category = CATEGORIES.get(name.split("_", 1)[0], "uncategorized")
        entries.append({"file": f"{name}.png", "category": category, "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"name": "scenes", "images": entries}
    (folder / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder
