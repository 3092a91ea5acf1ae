"""Image grids for reconstructions: one row per stimulus, one column per method, captions under the images.

    grid = reconstruction_grid({"GT": gt, "LDM": base_images, "LDM + FgB2I": fgb2i_images},
                               captions={"LDM + FgB2I": decoded_captions})
    grid.save("grid.png")

Plain PIL (no figure backend), so it runs in any recipe or test; the default bitmap font keeps it offline.
"""

from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from .clip import images_to_tensor

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


def _to_pil_list(images) -> list[PIL.Image.Image]:
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], PIL.Image.Image):
        return [im.convert("RGB") for im in images]
    array = images_to_tensor(images).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return [PIL.Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]


def _font(size: int):
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return PIL.ImageFont.load_default()


def reconstruction_grid(columns: Mapping[str, object], captions: Mapping[str, Sequence[str]] | None = None,
                        image_size: int = 160, caption_lines: int = 4, max_rows: int | None = None,
                        font_size: int = 11) -> PIL.Image.Image:
    """A grid image: a header row of column names, then one row per stimulus.

    Args:
        columns: ``{column name: images}``, all with the same number of images (PIL list, uint8
            (N, H, W, 3) or float (N, 3, H, W) in [0, 1]); e.g. GT | base | FgB2I.
        captions: ``{column name: N captions}`` printed under that column's images (wrapped, cut to
            ``caption_lines`` lines).
        image_size: the side of each tile in pixels.
        max_rows: show only the first rows.
    """
    if not columns:
        raise ValueError("reconstruction_grid needs at least one column of images")
    tiles = {name: _to_pil_list(images) for name, images in columns.items()}
    counts = {name: len(t) for name, t in tiles.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"every column needs the same number of images, got {counts}")
    captions = dict(captions or {})
    for name, texts in captions.items():
        if name not in tiles:
            raise ValueError(f"captions given for {name!r}, which is not a column ({list(tiles)})")
        if len(texts) != counts[name]:
            raise ValueError(f"{len(texts)} captions for the {counts[name]} images of column {name!r}")
    rows = min(next(iter(counts.values())), max_rows or 10**9)

    font = _font(font_size)
    line_height = font_size + 3
    caption_height = caption_lines * line_height + 4 if captions else 0
    header_height = line_height + 8
    chars_per_line = max(8, int(image_size / (0.6 * font_size)))
    width = len(tiles) * (image_size + 8) + 8
    height = header_height + rows * (image_size + caption_height + 8) + 8
    grid = PIL.Image.new("RGB", (width, height), BACKGROUND)
    draw = PIL.ImageDraw.Draw(grid)
    for c, (name, images) in enumerate(tiles.items()):
        x = 8 + c * (image_size + 8)
        draw.text((x, 6), name, fill=INK, font=font)
        for r in range(rows):
            y = header_height + r * (image_size + caption_height + 8)
            grid.paste(images[r].resize((image_size, image_size), PIL.Image.Resampling.BICUBIC), (x, y))
            if name in captions:
                lines = textwrap.wrap(str(captions[name][r]), chars_per_line)
                if len(lines) > caption_lines:
                    lines = lines[:caption_lines]
                    lines[-1] = lines[-1][: chars_per_line - 3] + "..."
                for k, line in enumerate(lines):
                    draw.text((x, y + image_size + 2 + k * line_height), line, fill=INK, font=font)
    return grid
