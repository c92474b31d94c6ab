"""Device and precision selection, and the CUDA path (run where a GPU is lent)."""

import pytest
import torch

from sag import SaG, autocast, resolve_device, tiny_config
from sag.device import resolve_precision
from sag.pipeline import predict


def test_device_from_argument():
    auto = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == auto
    assert resolve_device() == auto
    with pytest.raises(ValueError, match="unsupported device"):
        resolve_device("tpu")


@pytest.mark.parametrize("value", ["cpu", "cuda"], ids=lambda v: f"SAG_DEVICE={v}")  # an id "cuda" would be skipped
def test_sag_reads_no_environment(monkeypatch, value):
    monkeypatch.setenv("SAG_DEVICE", value)
    assert resolve_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_training_cli_reads_sag_device(monkeypatch):
    from training.cli import _init_distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("SAG_DEVICE", "cpu")
    assert _init_distributed() == torch.device("cpu")  # no --device: SAG_DEVICE
    monkeypatch.setenv("SAG_DEVICE", "tpu")
    assert _init_distributed("cpu") == torch.device("cpu")  # --device wins


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_request_without_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")


def test_precision_is_fp32_on_cpu():
    assert resolve_precision("bf16", torch.device("cpu")) is None
    with autocast(torch.device("cpu"), "auto"):
        assert torch.ones(1).dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", torch.device("cpu"))


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_mixed_precision_matches_cpu(precision, random_images):
    torch.manual_seed(0)
    model = SaG(tiny_config()).eval()
    images = random_images([(48, 64)])
    texts = ["the small red circle"]
    cpu = predict(model, images, texts)[0]
    model = model.to("cuda")
    with autocast(torch.device("cuda"), precision):
        gpu = predict(model, images, texts)[0]
    assert gpu.mask.shape == cpu.mask.shape
    torch.testing.assert_close(gpu.soft.cpu(), cpu.soft, atol=0.05, rtol=0)
    # Training step in mixed precision on the GPU.
    model.train()
    pixels = torch.randn(2, 3, 64, 64, device="cuda")
    with autocast(torch.device("cuda"), precision):
        out = model(pixels, **model.tokenize(["a", "b"]))
    out.loss.backward()
    assert torch.isfinite(out.loss)
