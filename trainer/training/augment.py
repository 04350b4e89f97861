"""Training and evaluation views of a decoded image, as torchvision's classification presets make them.

Training: RandomResizedCrop(input_size, scale=(crop_scale, 1), ratio=(3/4, 4/3)) + horizontal flip.
Evaluation: the stored image (shorter side input_size / 0.875) centre-cropped to input_size.

The randomness is not drawn here: each image of a batch comes with five uniforms in [0, 1) (area, log aspect,
x, y, flip) drawn from a generator seeded by (seed, round, step), so a batch is a pure function of those and
the image, whatever the thread count, the number of ranks, or a resume.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as TF

UNIFORMS = 5  # per image: area, log aspect ratio, x, y, flip
_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))


def resize_size(input_size: int) -> int:
    """Shorter side of the stored images: input_size / 0.875 (224 -> 256), as torchvision's eval preset."""
    return int(round(input_size / 0.875))


def crop_box(height: int, width: int, u: torch.Tensor, scale_min: float) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random-resized crop from five uniforms ``u`` (UNIFORMS,).

    torchvision rejection-samples up to ten times and falls back to a centre crop; this draws once and shrinks
    a crop that does not fit to the image's bounds, so one draw always gives a box (same distribution where it
    fits, which is nearly always for scale <= 1 and ratios in [3/4, 4/3]).
    """
    area = height * width * (scale_min + (1.0 - scale_min) * float(u[0]))
    ratio = math.exp(_LOG_RATIO[0] + (_LOG_RATIO[1] - _LOG_RATIO[0]) * float(u[1]))
    w = min(width, max(1, int(round(math.sqrt(area * ratio)))))
    h = min(height, max(1, int(round(math.sqrt(area / ratio)))))
    top = min(height - h, int(float(u[3]) * (height - h + 1)))
    left = min(width - w, int(float(u[2]) * (width - w + 1)))
    return top, left, h, w


def train_view(image: torch.Tensor, u: torch.Tensor, size: int, scale_min: float) -> torch.Tensor:
    """uint8 (3, size, size) random-resized crop (+ flip when u[4] < 0.5) of a uint8 (3, H, W) image."""
    top, left, h, w = crop_box(image.shape[1], image.shape[2], u, scale_min)
    view = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    return view.flip(-1) if float(u[4]) < 0.5 else view


def eval_view(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (3, size, size) centre crop of a uint8 (3, H, W) image whose shorter side is resize_size."""
    return TF.center_crop(image, [size, size])
