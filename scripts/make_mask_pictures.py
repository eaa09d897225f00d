#!/usr/bin/env python3
"""Draws every catalogue mask (SPEC §3) as a PNG under docs/masks/, from the project's own
builders and its to_dense converter (the installed flashmask package: `pip install .` first).

    python scripts/make_mask_pictures.py [--n 64] [--seed 1] [--out docs/masks]

One picture per mask, <name>.png: query rows top to bottom, keys left to right, visible = dark,
masked = light, thin lines between tiles of --tile tokens; plus catalogue.png, all twelve
side by side in SPEC order. PNG is written with the standard library only (zlib + struct).
"""

from __future__ import annotations

import argparse
import pathlib
import struct
import zlib

import numpy as np

import flashmask

VISIBLE = (38, 70, 120)      # dark blue
MASKED = (236, 239, 244)     # light grey
GRID = (170, 178, 190)       # tile boundaries
BACKGROUND = (255, 255, 255)  # between pictures in the grid image


def png_bytes(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of an [height, width, 3] uint8 array."""
    height, width, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    # Each scanline starts with filter type 0 (none).
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)], axis=1)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 9))
            + chunk(b"IEND", b""))


def picture(dense: np.ndarray, cell: int, tile: int) -> np.ndarray:
    """RGB pixels of a dense visibility mask: `cell` pixels per element, a 1-pixel grid line on
    the first pixel row/column of every tile of `tile` elements (tile 0 = no grid)."""
    colors = np.where(dense[..., None], np.array(VISIBLE, np.uint8), np.array(MASKED, np.uint8))
    pixels = np.repeat(np.repeat(colors, cell, axis=0), cell, axis=1)
    if tile > 0:
        step = tile * cell
        pixels[::step, :] = GRID
        pixels[:, ::step] = GRID
    return pixels


def grid_image(pictures: list, columns: int, gap: int) -> np.ndarray:
    size = pictures[0].shape[0]
    rows = -(-len(pictures) // columns)
    image = np.full((rows * size + (rows + 1) * gap, columns * size + (columns + 1) * gap, 3), BACKGROUND, np.uint8)
    for index, pixels in enumerate(pictures):
        top = gap + (index // columns) * (size + gap)
        left = gap + (index % columns) * (size + gap)
        image[top:top + size, left:left + size] = pixels
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="sequence length (Nq = Nk)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random document lengths / evictions")
    parser.add_argument("--cell", type=int, default=4, help="pixels per mask element")
    parser.add_argument("--tile", type=int, default=16, help="tokens per tile grid line (0 = none)")
    parser.add_argument("--out", type=pathlib.Path,
                        default=pathlib.Path(__file__).resolve().parent.parent / "docs" / "masks")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    pictures = []
    for name in flashmask.catalogue_names():
        mask = flashmask.catalogue(name, args.n, args.seed)
        dense = flashmask.to_dense(mask, nq=args.n, nk=args.n)
        pixels = picture(dense, args.cell, args.tile)
        (args.out / f"{name}.png").write_bytes(png_bytes(pixels))
        pictures.append(pixels)
        print(f"{name:24s} density {dense.mean():.2f}")
    gap = 2 * args.cell
    (args.out / "catalogue.png").write_bytes(png_bytes(grid_image(pictures, columns=4, gap=gap)))
    print(f"wrote {len(pictures) + 1} pictures to {args.out}")


if __name__ == "__main__":
    main()
