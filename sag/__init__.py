"""SaG: Shatter and Gather, text-supervised referring image segmentation (Kim et al., ICCV 2023), in plain PyTorch.

Quick start::

    from sag import SaG, tiny_config
    model = SaG(tiny_config())
    [seg] = model.predict([image], ["the red circle on the left"])
    seg.mask  # (H, W) bool

Modules (the model is ``model``; the rest is what it is made of, and what training and the backend use around it)::

    config         SaGConfig (every hyper-parameter, JSON with each checkpoint), paper_config(), tiny_config()
    model          SaG: encode_image / encode_text / fuse, the training losses, predict / segment; load_pretrained
    image_encoder  image backbones (timm ViT, torchvision MobileNetV2, a tiny test ViT) -> patch features (B, N, C)
    text_encoder   BERT-family text backbones (transformers) -> [CLS] feature projected to D; tokenisation
    layers         shared blocks: FeedForward, CrossAttention (returns its weights), split_heads / merge_heads
    position       2-D sine position encoding added before entity discovery
    entity         bottom-up attention (Sec. 3.2): entity slots, aggregation and group interaction -> entities, A_slot
    fusion         top-down attention (Sec. 3.3): text-queried cross-attention -> z and A_fuse
    decoder        spatial-broadcast MLP decoder for the reconstruction loss (Sec. 3.4.2)
    losses         C^3 (Eq. 8) and feature reconstruction (Eq. 9)
    inference      A_slot x A_fuse -> soft map, Table 4(b) ablations, per-entity maps
    refine         edge-aware refinement of the upsampled soft map before the threshold (none / guided / slic)
    spatial        spatial words ("leftmost", "above the ...", "small") pick one region of the mask; segment_texts
    preprocess     PIL / uint8 images stretched to the backbone's square input (as the paper) and normalised
    metrics        IoU, mIoU, cIoU, accuracy at IoU thresholds, and diagnostics (boundary F, pointing, overlap)
    confidence     a score per mask that estimates its IoU (mask_confidence: the region score), and how well it ranks
    checkpoint     versioned checkpoints: safetensors + config + metadata, written atomically
    device         device choice (cpu / cuda[:n] / auto, no environment read) and mixed-precision autocast
"""

from .checkpoint import CheckpointInfo, read_metadata, save_pretrained
from .confidence import mask_confidence
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
    "mask_confidence",
]
