"""Edge-aware mask refinement: the soft map, upsampled from the patch grid, re-drawn along the image's own edges.

SaG's soft map lives on the patch grid (12-24 cells a side) and is bilinearly upsampled to the image, so even the
right object comes back as a blob whose edge is smeared over about one cell. :func:`refine` re-draws that map guided
by the image, before the threshold:

* ``none``: the bilinear map unchanged (the paper's inference).
* ``guided``: the colour guided filter of He, Sun and Tang ("Guided Image Filtering", ECCV 2010; TPAMI 35(6), 2013,
  Eq. 19-21 for the colour guide), computed as He and Sun's "fast guided filter" (arXiv:1505.00996, 2015): the
  coefficients on the subsampled image, applied to the full-size one. Locally the output is a linear function of the
  image's colour, so where the coarse map changes across a window that holds an image edge, the change moves onto
  that edge. Box filters from cumulative sums (O(1) per pixel whatever the radius), in torch.
* ``slic``: the mean of the soft map inside each SLIC superpixel (Achanta et al., "SLIC Superpixels Compared to
  State-of-the-Art Superpixel Methods", TPAMI 2012; scikit-image's ``slic``, imported here only).

Both take their scale from the patch cell (the image side over the grid side), the distance over which bilinear
upsampling smears an edge. Every method returns a map min-max normalised to [0, 1], so the threshold tau keeps its
meaning (mask = minmax(refine(bilinear(A_slot . A_fuse))) >= tau).

Not here: a dense CRF. ``pydensecrf`` and its fork ``pydensecrf2`` ship no wheels for current Pythons on PyPI (source
only, a Cython and C++ build), so they do not install cleanly; OpenCV's joint bilateral filter is in
``opencv-contrib`` (``ximgproc``), not in the headless build this project depends on.

:class:`PromptableRefiner` is an optional hook for a promptable mask model (SAM through ``transformers``), prompted
from SaG's own mask.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .preprocess import to_pil

REFINE_METHODS: tuple[str, ...] = ("none", "guided", "slic")

# Guided filter: window radius in patch cells and regularisation eps on colours in [0, 1] (He et al.'s epsilon,
# which decides what counts as an edge: variances well above eps are kept, below it smoothed). Chosen on the
# synthetic val split (bench/README.md, "Mask refinement").
GUIDED_RADIUS_CELLS = 2.0
GUIDED_EPS = 1e-2
# The fast guided filter works on the image subsampled so that the window radius is this many working pixels.
GUIDED_SUBSAMPLE_RADIUS = 8.0
# SLIC: superpixels per patch cell, compactness (scikit-image's default for Lab colour).
SLIC_SEGMENTS_PER_CELL = 4.0
SLIC_COMPACTNESS = 10.0
# The working image (subsampled) has at most this many pixels a side; full-size images are read in bands of about
# _BAND_PIXELS pixels, so memory stays a few times the image's own.
MAX_SIDE = 1024
_BAND_PIXELS = 1 << 20


def as_rgb_array(image: Any) -> np.ndarray:
    """A guide image (PIL image, or an (H, W), (H, W, 3) or (H, W, 4) uint8 array) -> (H, W, 3) uint8 RGB."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image
    return np.asarray(to_pil(image))


def _minmax(x: torch.Tensor) -> torch.Tensor:
    low, high = x.min(), x.max()
    if float(high - low) < 1e-6:  # a flat map has nothing to normalise (refinement of a constant is that constant)
        return x.clamp(0.0, 1.0)
    return (x - low) / (high - low)


def refine(soft: torch.Tensor, image: Any, method: str = "guided", cell: float | None = None,
           **options: Any) -> torch.Tensor:
    """Re-draw a soft map along the image's edges.

    Args:
        soft: (H, W) float in [0, 1], the bilinearly upsampled map.
        image: the guide, (H, W, 3) uint8 (or a PIL image, or anything :func:`as_rgb_array` takes) of the same size.
        method: one of :data:`REFINE_METHODS`.
        cell: the patch cell in image pixels (about max(H / grid_h, W / grid_w)), the scale of the smear to undo;
            default: the longer side / 16.
        options: per method: ``guided``: ``radius_cells``, ``eps``, ``subsample``, ``max_side``;
            ``slic``: ``segments_per_cell`` or ``n_segments``, ``compactness``, ``max_side``.

    Returns:
        (H, W) float32 in [0, 1], min-max normalised (a flat result is returned clamped, not stretched), on
        ``soft``'s device. ``none`` returns ``soft`` itself. Deterministic.
    """
    if method not in REFINE_METHODS:
        raise ValueError(f"unknown mask refinement {method!r}; choose from {REFINE_METHODS}")
    if soft.ndim != 2:
        raise ValueError(f"expected an (H, W) soft map, got shape {tuple(soft.shape)}")
    if method == "none":
        return soft
    guide = as_rgb_array(image)
    if guide.shape[:2] != tuple(soft.shape):
        raise ValueError(f"guide image {guide.shape[:2]} and soft map {tuple(soft.shape)} differ in size")
    h, w = soft.shape
    cell = float(cell) if cell else max(h, w) / 16.0
    if method == "guided":
        out = guided_filter(soft, guide, radius=max(1.0, options.pop("radius_cells", GUIDED_RADIUS_CELLS) * cell),
                            **options)
    else:
        out = slic_pool(soft, guide, cell, **options)
    return _minmax(out)


# ---- guided filter -----------------------------------------------------------------------------------------------
def _box_mean(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean of x (C, H, W) over the (2r+1)^2 window around each pixel, clipped at the border (He et al.'s
    ``boxfilter(I, r) / boxfilter(1, r)``), from cumulative sums along each axis in turn (O(1) per pixel)."""
    out = x
    for dim in (1, 2):
        n = out.shape[dim]
        rd = min(r, n)  # a window wider than the image covers all of it
        zeros = torch.zeros_like(out.narrow(dim, 0, 1))
        c = torch.cat([zeros, out.cumsum(dim)], dim=dim)  # c[k] = sum of the first k
        # padded so that window i is cp[i + 2r + 1] - cp[i] = c[min(i + r + 1, n)] - c[max(i - r, 0)]
        pad = list(c.shape)
        pad[dim] = rd
        cp = torch.cat([zeros.expand(pad), c, c.narrow(dim, n, 1).expand(pad)], dim=dim)
        idx = torch.arange(n, device=x.device)
        count = ((idx + rd + 1).clamp(max=n) - (idx - rd).clamp(min=0)).to(out.dtype)
        shape = [1, 1, 1]
        shape[dim] = n
        out = (cp.narrow(dim, 2 * rd + 1, n) - cp.narrow(dim, 0, n)) / count.view(shape)
    return out


def _guided_coefficients(guide: torch.Tensor, p: torch.Tensor, r: int, eps: float) -> tuple[torch.Tensor, ...]:
    """Window-averaged coefficients (mean_a (3, h, w), mean_b (1, h, w)) of the colour guided filter of ``p``
    (1, h, w) with ``guide`` (3, h, w) in [0, 1] (He et al. 2013, Eq. 19-21 and their Algorithm 1)."""
    mean_i = _box_mean(guide, r)  # (3, h, w)
    mean_p = _box_mean(p, r)
    cov_ip = _box_mean(guide * p, r) - mean_i * mean_p  # (3, h, w)
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    prods = torch.stack([guide[i] * guide[j] for i, j in pairs])
    means = _box_mean(prods, r)
    s = [means[k] - mean_i[i] * mean_i[j] for k, (i, j) in enumerate(pairs)]
    a11, a12, a13, a22, a23, a33 = s[0] + eps, s[1], s[2], s[3] + eps, s[4], s[5] + eps
    # (Sigma + eps U)^-1 by its adjugate: symmetric 3 x 3 per pixel, positive definite thanks to eps.
    c11, c12, c13 = a22 * a33 - a23 * a23, a13 * a23 - a12 * a33, a12 * a23 - a13 * a22
    c22, c23, c33 = a11 * a33 - a13 * a13, a12 * a13 - a11 * a23, a11 * a22 - a12 * a12
    det = a11 * c11 + a12 * c12 + a13 * c13
    v1, v2, v3 = cov_ip[0], cov_ip[1], cov_ip[2]
    a = torch.stack([c11 * v1 + c12 * v2 + c13 * v3, c12 * v1 + c22 * v2 + c23 * v3,
                     c13 * v1 + c23 * v2 + c33 * v3]) / det
    b = mean_p - (a * mean_i).sum(0, keepdim=True)
    return _box_mean(a, r), _box_mean(b, r)


def guided_filter(soft: torch.Tensor, guide: np.ndarray, radius: float, eps: float = GUIDED_EPS,
                  subsample: float | None = None, max_side: int = MAX_SIDE) -> torch.Tensor:
    """The colour guided filter of ``soft`` (H, W) with the image ``guide`` (H, W, 3) uint8 -> (H, W) float32, not
    normalised; ``radius`` in image pixels.

    He and Sun's fast guided filter: the coefficients are computed on the image and map averaged over k x k blocks,
    k = ``subsample`` (default: radius / :data:`GUIDED_SUBSAMPLE_RADIUS`, so the window spans a fixed number of
    working pixels; at least enough that the longer side is at most ``max_side``), then bilinearly upsampled and
    applied to the full-size image: the output's edges are the full-size image's. Large images are read a band of
    rows at a time, so memory stays a few times the image's own.
    """
    h, w = soft.shape
    device = soft.device
    guide = np.ascontiguousarray(guide)
    guide = guide if guide.flags.writeable else guide.copy()  # torch wants writable arrays (PIL's are not)
    full = torch.from_numpy(guide).to(device).permute(2, 0, 1)  # (3, H, W) uint8
    k = int(max(1.0, subsample if subsample is not None else radius / GUIDED_SUBSAMPLE_RADIUS))
    k = max(k, math.ceil(max(h, w) / max_side))
    r = max(1, int(round(radius / k)))
    if k == 1:  # the exact guided filter
        image = full.float() / 255.0
        mean_a, mean_b = _guided_coefficients(image, soft.float()[None], r, eps)
        return (mean_a * image).sum(0) + mean_b[0]
    band = max(k, _BAND_PIXELS // w // k * k)  # rows per band, a multiple of k so blocks do not straddle bands
    # block means (partial blocks at the border average their pixels only)
    small = torch.cat([F.avg_pool2d(full[None, :, y:y + band].float(), k, ceil_mode=True)[0]
                       for y in range(0, h, band)], dim=1) / 255.0
    p = F.avg_pool2d(soft.float()[None, None], k, ceil_mode=True)[0]
    mean_a, mean_b = _guided_coefficients(small, p, r, eps)
    # q = mean_a . I + mean_b, the coefficients bilinearly upsampled: block i is centred on pixel (i + 0.5) k - 0.5,
    # so pixel y samples the working grid at (y + 0.5) / k - 0.5 (grid_sample's normalised coordinates below).
    coeffs = torch.cat([mean_a, mean_b])[None]  # (1, 4, h', w')
    hs, ws = coeffs.shape[-2:]
    out = torch.empty(h, w, dtype=torch.float32, device=device)
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / (k * ws) * 2 - 1
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        ys = (torch.arange(y0, y1, device=device, dtype=torch.float32) + 0.5) / (k * hs) * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]  # (1, rows, W, (x, y))
        up = F.grid_sample(coeffs, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        out[y0:y1] = (up[:3] * full[:, y0:y1]).sum(0) / 255.0 + up[3]
    return out


# ---- superpixels -------------------------------------------------------------------------------------------------
def slic_pool(soft: torch.Tensor, guide: np.ndarray, cell: float, segments_per_cell: float = SLIC_SEGMENTS_PER_CELL,
              n_segments: int | None = None, compactness: float = SLIC_COMPACTNESS,
              max_side: int = MAX_SIDE) -> torch.Tensor:
    """The mean of ``soft`` (H, W) inside each SLIC superpixel of ``guide`` (H, W, 3) uint8 -> (H, W) float32.

    ``n_segments`` defaults to ``segments_per_cell`` per patch cell of side ``cell``. Above ``max_side`` the
    superpixels are found on the subsampled image and the pooled map is resized back bilinearly.
    """
    try:
        from skimage.segmentation import slic  # only this method needs scikit-image (an optional dependency)
    except ImportError as exc:  # pragma: no cover - installed with the test and slic extras
        raise ImportError("mask refinement 'slic' needs scikit-image: pip install 'sag-assist[slic]'") from exc

    h, w = soft.shape
    if n_segments is None:
        n_segments = max(2, int(round(segments_per_cell * h * w / (cell * cell))))
    scale = min(1.0, max_side / max(h, w))
    p = soft.float()
    if scale < 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        guide = np.asarray(F.interpolate(torch.from_numpy(np.ascontiguousarray(guide)).permute(2, 0, 1)[None].float(),
                                         size=size, mode="area")[0].permute(1, 2, 0).round().byte())
        p = F.interpolate(p[None, None], size=size, mode="area")[0, 0]
    labels = slic(guide, n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=-1)
    values = p.detach().cpu().double().numpy().ravel()
    flat = labels.ravel()
    sums = np.bincount(flat, weights=values)
    counts = np.maximum(np.bincount(flat), 1)
    pooled = torch.from_numpy((sums / counts)[labels].astype(np.float32)).to(soft.device)
    if scale < 1.0:
        pooled = F.interpolate(pooled[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return pooled


def patch_cell(grid: tuple[int, int], size: tuple[int, int]) -> float:
    """The patch cell in pixels of an image of ``size`` (H, W) whose soft map came from a ``grid`` (h, w)."""
    return max(size[0] / grid[0], size[1] / grid[1])



# ---- optional: a promptable mask model -------------------------------------------------------------------------
class PromptableRefiner:
    """Re-draw SaG's mask with a promptable mask model, prompted from SaG's own map: the bounding box of
    ``soft >= threshold`` and one positive point at the map's maximum (SAM: Kirillov et al., "Segment Anything",
    ICCV 2023, through ``transformers``' ``SamModel`` / ``SamProcessor``; any model and processor with that call
    convention fits).

    Pass it where a method name goes:
    ``sag.pipeline.predict(model, images, texts, refine=PromptableRefiner(sam, processor))``,
    ``SaG.segment(..., refine=...)``, ``training.evaluate.evaluate(..., refine=...)``. The weights are the user's to
    download (e.g. ``SamModel.from_pretrained("facebook/sam-vit-base")``); its quality on SaG's masks is unmeasured
    here (no weights on these machines), only the code path is tested, with a tiny randomly initialised SAM.

    Called with soft (H, W) in [0, 1] and the image (H, W, 3) uint8 (or PIL), it returns (H, W) float32 in [0, 1]:
    the promptable model's mask probability (sigmoid of its logits, so 0.5 is its own decision boundary), on
    ``soft``'s device, or ``soft`` unchanged when nothing reaches the threshold (no prompt to give).
    """

    def __init__(self, model: Any, processor: Any, threshold: float = 0.5):
        self.model = model.eval()
        self.processor = processor
        self.threshold = threshold

    @torch.no_grad()
    def __call__(self, soft: torch.Tensor, image: Any) -> torch.Tensor:
        guide = as_rgb_array(image)
        if guide.shape[:2] != tuple(soft.shape):
            raise ValueError(f"guide image {guide.shape[:2]} and soft map {tuple(soft.shape)} differ in size")
        mask = soft >= self.threshold
        if not mask.any():
            return soft
        ys, xs = torch.nonzero(mask, as_tuple=True)
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]  # x0, y0, x1, y1
        peak = int(soft.argmax())
        point = [float(peak % soft.shape[1]) + 0.5, float(peak // soft.shape[1]) + 0.5]  # x, y
        inputs = self.processor(images=guide, input_boxes=[[box]], input_points=[[[point]]],
                                input_labels=[[[1]]], return_tensors="pt")
        device = next(self.model.parameters()).device
        out = self.model(pixel_values=inputs["pixel_values"].to(device), input_boxes=inputs["input_boxes"].to(device),
                         input_points=inputs["input_points"].to(device),
                         input_labels=inputs["input_labels"].to(device), multimask_output=False)
        logits = self.processor.post_process_masks(out.pred_masks.cpu(), inputs["original_sizes"],
                                                   inputs["reshaped_input_sizes"], binarize=False)[0]
        return torch.sigmoid(logits[0, 0].float()).to(soft.device)
