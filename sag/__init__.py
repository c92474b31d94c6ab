"""SaG: Shatter and Gather, text-supervised referring image segmentation (Kim et al., ICCV 2023), in plain PyTorch.

Quick start::

    from sag import SaG, tiny_config
    model = SaG(tiny_config())
    [seg] = model.predict([image], ["the red circle on the left"])
    seg.mask  # (H, W) bool
"""

from .checkpoint import CheckpointInfo, read_metadata, save_pretrained
from .config import SaGConfig, paper_config, tiny_config
from .device import autocast, resolve_device
from .inference import SCHEMES, combine_attention
from .metrics import SegmentationMetrics, intersection_union, iou
from .model import ImageEntities, SaG, Segmentation, TrainOutput, head_parameters, load_pretrained

__version__ = "0.1.0"

__all__ = [
    "SaG", "SaGConfig", "paper_config", "tiny_config", "ImageEntities", "Segmentation", "TrainOutput",
    "CheckpointInfo", "save_pretrained", "load_pretrained", "read_metadata", "SegmentationMetrics", "iou",
    "intersection_union", "SCHEMES", "combine_attention", "autocast", "resolve_device", "head_parameters",
]
