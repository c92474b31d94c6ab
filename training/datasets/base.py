"""What every data set yields: referring expressions over images, with evaluation masks where the format has them.

A data set is a list of :class:`Expression` records (one per sentence, so every expression is evaluated exactly
once). Images and masks are read lazily. :meth:`ReferringDataset.pairs` is the training view: it never decodes a mask,
so training sees image-text pairs only.
"""

from __future__ import annotations

import io
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ..exceptions import DatasetError

ImageLoader = Callable[[str], Image.Image]


class MaskSource(Protocol):
    def decode(self, size: tuple[int, int]) -> np.ndarray:  # pragma: no cover - protocol
        """The (H, W) bool mask of an image of ``size`` = (H, W)."""


@dataclass(frozen=True)
class PolygonMask:
    """Polygons ((x0, y0, x1, y1, ...), ...) in pixel coordinates, filled (union) on the image's canvas."""

    polygons: tuple[tuple[float, ...], ...]

    def decode(self, size: tuple[int, int]) -> np.ndarray:
        from PIL import ImageDraw

        canvas = Image.new("L", (size[1], size[0]), 0)
        draw = ImageDraw.Draw(canvas)
        for poly in self.polygons:
            if len(poly) >= 6:
                draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=255)
        return np.asarray(canvas) > 0


@dataclass(frozen=True)
class CocoSegmentation:
    """A COCO ``segmentation`` (polygon list, RLE or uncompressed RLE), decoded with pycocotools."""

    segmentation: object
    height: int
    width: int

    def decode(self, size: tuple[int, int]) -> np.ndarray:
        from pycocotools import mask as mask_utils

        segm = self.segmentation
        if isinstance(segm, list):
            rles = mask_utils.frPyObjects(segm, self.height, self.width)
            rle = mask_utils.merge(rles)
        elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
            rle = mask_utils.frPyObjects(segm, self.height, self.width)
        else:
            rle = segm
        return mask_utils.decode(rle).astype(bool)


@dataclass(frozen=True)
class MaskFile:
    """A mask image on disk; any non-zero pixel is foreground."""

    path: str

    def decode(self, size: tuple[int, int]) -> np.ndarray:
        path = Path(self.path)
        if not path.is_file():
            raise DatasetError(f"mask file not found: {path}")
        array = np.asarray(Image.open(path))
        return (array[..., 0] if array.ndim == 3 else array) > 0


@dataclass(frozen=True)
class ArrayMask:
    """A mask already in memory (e.g. decoded from a Label Studio brush RLE)."""

    array: np.ndarray

    def decode(self, size: tuple[int, int]) -> np.ndarray:
        return np.asarray(self.array, dtype=bool)


@dataclass(frozen=True)
class Expression:
    """One referring expression: the image it is about, the text, and (for evaluation) its mask."""

    image: str  # a local path or a URL
    text: str
    image_id: str
    ref_id: str
    split: str
    mask: MaskSource | None = None
    kind: str | None = None  # an optional group for per-group metrics (the synthetic expression kind)


@dataclass
class Sample:
    """One item of a data set: image (PIL, RGB), text, and the mask (H, W) bool when it is an evaluation item."""

    image: Image.Image
    text: str
    mask: np.ndarray | None
    image_id: str
    ref_id: str


def _upright_rgb(image: Image.Image) -> Image.Image:
    """RGB in the orientation its EXIF tag asks for: the orientation Label Studio (and the backend) show and mask."""
    return ImageOps.exif_transpose(image).convert("RGB")


def load_image(source: str) -> Image.Image:
    """An RGB image from a local path, a ``file://`` URL or an ``http(s)://`` URL (plain GET, no credentials).

    Data sets behind authentication (Label Studio uploads) take their own ``image_loader``.
    """
    parsed = urllib.parse.urlparse(source)
    try:
        if parsed.scheme in ("http", "https"):
            with urllib.request.urlopen(source, timeout=30) as response:  # noqa: S310 - scheme checked above
                return _upright_rgb(Image.open(io.BytesIO(response.read())))
        path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else source)
        with Image.open(path) as im:
            return _upright_rgb(im)
    except FileNotFoundError:
        raise DatasetError(f"image not found: {source}") from None
    except OSError as exc:
        raise DatasetError(f"cannot read image {source}: {exc}") from exc


class ReferringDataset(Dataset):
    """A list of :class:`Expression` as a torch Dataset of :class:`Sample`.

    Args:
        expressions: one record per expression.
        name: for messages and metrics (e.g. ``refcoco/unc``).
        with_masks: decode masks (evaluation). False gives the image-text pairs used for training.
        image_loader: path/URL -> PIL image.
    """

    def __init__(self, expressions: Sequence[Expression], name: str = "dataset", with_masks: bool = True,
                 image_loader: ImageLoader = load_image):
        self.expressions = list(expressions)
        self.name = name
        self.with_masks = with_masks
        self.image_loader = image_loader

    def __len__(self) -> int:
        return len(self.expressions)

    def __getitem__(self, index: int) -> Sample:
        expr = self.expressions[index]
        image = self.image_loader(expr.image)
        mask = None
        if self.with_masks:
            if expr.mask is None:
                raise DatasetError(f"{self.name}: expression {expr.ref_id!r} has no mask to evaluate against")
            mask = expr.mask.decode((image.height, image.width))
            if mask.shape != (image.height, image.width):
                raise DatasetError(f"{self.name}: mask of {expr.ref_id!r} is {mask.shape}, image {expr.image} is "
                                   f"{(image.height, image.width)}")
        return Sample(image, expr.text, mask, expr.image_id, expr.ref_id)

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.expressions]

    @property
    def has_masks(self) -> bool:
        return bool(self.expressions) and all(e.mask is not None for e in self.expressions)

    def pairs(self) -> "ReferringDataset":
        """The training view: the same expressions, masks never decoded (nor kept)."""
        return ReferringDataset([replace(e, mask=None) for e in self.expressions], self.name, with_masks=False,
                                image_loader=self.image_loader)

    def subset(self, indices: Iterable[int]) -> "ReferringDataset":
        return ReferringDataset([self.expressions[i] for i in indices], self.name, self.with_masks,
                                self.image_loader)

    def splits(self) -> dict[str, int]:
        """Expression counts per split."""
        counts: dict[str, int] = {}
        for e in self.expressions:
            counts[e.split] = counts.get(e.split, 0) + 1
        return counts


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{what} not found: {path}")
    return path
