"""Device and precision choice: ``cpu``, ``cuda[:n]`` or ``auto``; fp32, bf16 or fp16 autocast on CUDA."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """``None`` means ``auto``: CUDA when available, else CPU. The library reads no environment; ``SAG_DEVICE`` is
    read by the command lines and the backend, which pass it in."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {spec!r}; use cpu, cuda, cuda:N or auto")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but CUDA is not available (use cpu or auto)")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; ``None`` means plain fp32.

    ``auto`` is bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, precision: str = "auto"):
    """A context manager running the block in mixed precision on CUDA (a no-op on CPU or for fp32)."""
    dtype = resolve_precision(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
