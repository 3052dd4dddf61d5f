"""Image decoding and transforms with Pillow and torch (torchvision is not a dependency)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.datasets._errors import CorruptDataError, DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB image as float ``(3, H, W)`` in [0, 1], resized (bilinear, Pillow) to ``size = (h, w)`` if given.

    A missing, truncated or undecodable file raises an error naming it.
    """
    try:
        from PIL import Image
    except ImportError as exc:
        raise DatasetError("image datasets need Pillow: pip install pillow") from exc
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and (im.height, im.width) != tuple(size):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise CorruptDataError(f"{path}: image listed but not found") from exc
    except OSError as exc:
        raise CorruptDataError(f"{path}: cannot decode the image ({exc}); the file may be truncated") from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def normalize(
    image: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> torch.Tensor:
    """Channel-wise ``(x - mean) / std``."""
    m = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - m) / s
