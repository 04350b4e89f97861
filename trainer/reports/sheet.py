"""The selection report's contact sheet (``selection.png``) and the thumbnails both parts use (PIL only)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

THUMB_PX = 96
MAX_SHEET_ROWS = 36


def thumbnail(path: Path | None, px: int) -> Image.Image | None:
    if path is None or not path.is_file():
        return None
    try:
        with Image.open(path) as img:
            img.draft("RGB", (px, px))
            img = img.convert("RGB")
            # Fit the cell both ways: corpora of small images (CIFAR, the demo's 64 px) stay legible.
            scale = px / max(img.size)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            return img.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
    except (OSError, ValueError):
        return None  # an unreadable cached file shows the placeholder, never breaks the report


def contact_sheet(paths, labels, classes, picks, sample, max_shown, find) -> bytes:
    """PNG: a row per sampled target: its image, then its best last-round sources (distance, class)."""
    rows = sample[:MAX_SHEET_ROWS]
    cell, text_h, gap = THUMB_PX, 26, 6
    width = gap + (1 + max_shown) * (cell + gap)
    height = gap + max(1, len(rows)) * (cell + text_h + gap)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for row, i in enumerate(rows):
        y = gap + row * (cell + text_h + gap)
        items = [(Path(paths[i]), f"{classes[labels[i]]}", "target")]
        items += [(find(p.source_id), f"{p.distance:.4f}", p.class_name) for p in picks[i][:max_shown]]
        for col, (path, line1, line2) in enumerate(items):
            x = gap + col * (cell + gap)
            img = thumbnail(path, cell)
            if img is None:
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(235, 235, 235))
            else:
                sheet.paste(img, (x + (cell - img.width) // 2, y + (cell - img.height) // 2))
            if col == 0:
                draw.rectangle([x - 2, y - 2, x + cell + 1, y + cell + 1], outline=(47, 111, 222), width=2)
            draw.text((x, y + cell + 1), line1[:16], fill=(30, 35, 48), font=font)
            draw.text((x, y + cell + 13), line2[:16], fill=(102, 112, 133), font=font)
    out = io.BytesIO()
    sheet.save(out, "PNG", optimize=True)
    return out.getvalue()
