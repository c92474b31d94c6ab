"""SaG: Shatter and Gather, text-supervised referring image segmentation (Kim et al., ICCV 2023), in plain PyTorch.

Quick start::

    from sag import SaG, predict, tiny_config
    model = SaG(tiny_config())
    [seg] = predict(model, [image], ["the red circle on the left"])
    seg.mask  # (H, W) bool

Modules. The paper (Sec. 3 and its inference, Table 4(b)); ``model`` is the nn.Module, the rest is what it is made
of and what it returns::

    config         SaGConfig (every hyper-parameter, JSON with each checkpoint), paper_config(), tiny_config()
    model          SaG: encode_image / encode_text / fuse, the training losses, segment (text features -> masks);
                   load_pretrained
    outputs        what the steps return: ImageEntities, Segmentation, TrainOutput, EntityOutput, FusionOutput
    image_encoder  image backbones (timm ViT, torchvision MobileNetV2, a tiny test ViT) -> patch features (B, N, C)
    text_encoder   BERT-family text backbones (transformers) -> [CLS] feature projected to D; tokenisation
    layers         shared blocks: FeedForward, CrossAttention (returns its weights), split_heads / merge_heads
    position       2-D sine position encoding added before entity discovery
    entity         bottom-up attention (Sec. 3.2): entity slots, aggregation and group interaction -> entities, A_slot
    fusion         top-down attention (Sec. 3.3): text-queried cross-attention -> z and A_fuse
    decoder        spatial-broadcast MLP decoder for the reconstruction loss (Sec. 3.4.2)
    losses         C^3 (Eq. 8) and feature reconstruction (Eq. 9)
    inference      A_slot x A_fuse -> soft map, Table 4(b) ablations, per-entity maps
    preprocess     PIL / uint8 images stretched to the backbone's square input (as the paper) and normalised
    metrics        IoU, mIoU, cIoU, accuracy at IoU thresholds, and diagnostics (boundary F, pointing, overlap)

Beyond the paper (the served masks; each can be turned off to get the paper's inference back)::

    pipeline       texts as strings -> masks above the model: TextQueries, segment_texts, predict (reads spatial
                   words); calls the model, which imports none of it
    spatial        spatial words ("leftmost", "above the ...", "small"): parse a text, pick one region of the mask
    refine         edge-aware refinement of the upsampled soft map before the threshold (none / guided / slic)
    confidence     a score per mask that estimates its IoU (mask_confidence: the region score), and how well it ranks

Around the model::

    checkpoint     versioned checkpoints: safetensors + config + metadata, written atomically
    device         device choice (cpu / cuda[:n] / auto, no environment read) and mixed-precision autocast
"""

from .checkpoint import CheckpointInfo, read_metadata, save_pretrained
from .confidence import mask_confidence
from .config import SaGConfig, paper_config, tiny_config
from .device import autocast, resolve_device
from .inference import SCHEMES, combine_attention
from .metrics import SegmentationMetrics, intersection_union, iou
from .model import SaG, head_parameters, load_pretrained
from .outputs import ImageEntities, Segmentation, TrainOutput
from .pipeline import TextQueries, predict, segment_texts

__version__ = "0.1.0"

__all__ = [
    "SaG", "SaGConfig", "paper_config", "tiny_config", "ImageEntities", "Segmentation", "TrainOutput",
    "CheckpointInfo", "save_pretrained", "load_pretrained", "read_metadata", "SegmentationMetrics", "iou",
    "intersection_union", "SCHEMES", "combine_attention", "autocast", "resolve_device", "head_parameters",
    "mask_confidence", "predict", "segment_texts", "TextQueries",
]
