"""Image preprocessing: stretch to a square (aspect ratio not kept, as in the paper) and normalise."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

ImageLike = Union[Image.Image, np.ndarray]


def to_pil(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a PIL image or an (H, W) / (H, W, 3|4) uint8 array."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return Image.fromarray(array).convert("RGB")
    raise ValueError(f"image array must be (H, W) or (H, W, 3|4), got {array.shape}")


def image_size(image: ImageLike) -> tuple[int, int]:
    """(height, width) of an image."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    return int(np.asarray(image).shape[0]), int(np.asarray(image).shape[1])


def preprocess_images(
    images: Sequence[ImageLike], size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """A list of images -> normalised pixels (B, 3, size, size), float32."""
    batch = []
    for image in images:
        pil = to_pil(image).resize((size, size), Image.BICUBIC)
        batch.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1))
    pixels = torch.stack(batch)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t
