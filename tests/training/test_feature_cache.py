"""The frozen-backbone feature cache (training/feature_cache.py), the model fed cached features, and the loop /
fine-tuning paths that use them. The backbones themselves: tests/sag/test_image_encoder.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sag import SaG, tiny_config
from sag.image_encoder import build_image_encoder
from sag.preprocess import preprocess_images
from training.datasets.base import load_image
from training.datasets.refcoco import refer_dataset
from training.engine import TrainConfig, Trainer
from training.feature_cache import CachedPairs, FeatureCache, image_key, weights_identity
from training.presets import build_model, get_preset


def _photos(n, size=(40, 52), seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


def _mobilenet_model(backbone="mobilenet_v2_s8", size=32, seed=0):
    # Random MobileNetV2 weights are enough to test plumbing; it has BatchNorm, which is what makes eval mode matter.
    torch.manual_seed(seed)
    return SaG(tiny_config(image_backbone=backbone, image_size=size))


@pytest.fixture
def pairs(synthetic_root):
    return refer_dataset(synthetic_root, "synthetic", "train", with_masks=False)


# ---- the model fed features ---------------------------------------------------------------------------------------

def test_forward_takes_pixels_or_features_not_both():
    model = _mobilenet_model().eval()
    ids = model.tokenize(["the red circle", "a blue square"])
    pixels = torch.randn(2, 3, 32, 32)
    feats, grid = model.image_encoder(pixels)
    torch.manual_seed(1)
    live = model(pixels, **ids)
    torch.manual_seed(1)
    cached = model(None, **ids, features=feats, grid=grid)
    assert torch.equal(live.loss, cached.loss)  # eval mode: the same features give the same loss exactly
    with pytest.raises(ValueError, match="either pixels"):
        model(pixels, **ids, features=feats, grid=grid)
    with pytest.raises(ValueError, match="either pixels"):
        model(None, **ids, features=feats)
    with pytest.raises(ValueError, match="channels"):
        model.encode_features(feats[..., :8], grid)


# ---- the cache itself ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("store", ["memory", "disk"])
def test_cache_returns_the_live_backbone_features(tmp_path, store):
    """Real ImageNet weights, stride 8 + 16: cached features equal the encoder's own (eval mode) to 1e-6."""
    preset = get_preset("cpu-synthetic-mobilenet", model={"image_backbone": "mobilenet_v2_s8s16"})
    encoder = build_image_encoder(preset.model, "package")
    images = _photos(5)
    cache = FeatureCache(encoder, preset.model.image_backbone, preset.model.image_size,
                         tmp_path if store == "disk" else None, batch_size=2)
    encoder.train()  # the cache must compute in eval mode whatever mode the encoder is left in ...
    first, grid = cache.features(images)
    assert encoder.training  # ... and put the mode back
    with torch.no_grad():
        live, live_grid = encoder.eval()(preprocess_images(images, preset.model.image_size, encoder.mean, encoder.std))
    assert grid == live_grid and first.shape == live.shape
    assert (first - live).abs().max() <= 1e-6
    again, _ = cache.features(images[::-1])
    assert torch.equal(again, first.flip(0))  # hits are the stored bits
    assert (cache.stats.hits, cache.stats.misses, cache.stats.entries) == (5, 5, 5)


def test_cache_is_keyed_by_image_content(tmp_path):
    encoder = _mobilenet_model().image_encoder
    cache = FeatureCache(encoder, "mobilenet_v2_s8", 32)
    a, b = _photos(2)
    # The same pixels reached through another object and another file are one entry; the second read is a hit.
    a_path = tmp_path / "a-copy.png"
    a.save(a_path)
    cache.features([a, b])
    assert (len(cache), cache.stats.misses, cache.stats.hits) == (2, 2, 0)
    cache.features([load_image(str(a_path)), a.copy()])
    assert (len(cache), cache.stats.misses, cache.stats.hits) == (2, 2, 2)
    # One changed pixel is another image.
    changed = np.asarray(a).copy()
    changed[0, 0, 0] ^= 1
    cache.features([Image.fromarray(changed)])
    assert (len(cache), cache.stats.misses) == (3, 3)
    # Repeats inside one batch are computed once.
    c = _photos(1, seed=5)[0]
    cache.features([c, c.copy(), c])
    assert (len(cache), cache.stats.misses, cache.stats.hits) == (4, 4, 4)
    # The very same bytes laid out as another shape are another image.
    assert image_key(a) != image_key(Image.frombytes("RGB", (a.height, a.width), a.tobytes()))


def test_namespace_covers_weights_size_and_backbone():
    model = _mobilenet_model()
    enc = model.image_encoder
    base = FeatureCache(enc, "mobilenet_v2_s8", 32)
    assert FeatureCache(enc, "mobilenet_v2_s8", 32).namespace == base.namespace  # deterministic
    assert FeatureCache(enc, "mobilenet_v2_s8", 64).namespace != base.namespace
    assert FeatureCache(enc, "other-name", 32).namespace != base.namespace
    before = weights_identity(enc)
    with torch.no_grad():
        enc.features[0][1].running_mean[0] += 1e-3  # a buffer, not a parameter: still other features
    assert weights_identity(enc) != before
    assert FeatureCache(enc, "mobilenet_v2_s8", 32).namespace != base.namespace


def test_disk_cache_persists_survives_a_torn_write_and_has_one_writer(tmp_path):
    encoder = _mobilenet_model().image_encoder
    images = _photos(3)
    cache = FeatureCache(encoder, "mobilenet_v2_s8", 32, tmp_path)
    feats, _ = cache.features(images)
    # A second process (here: a second instance) cannot write the same directory while the first holds it.
    other = FeatureCache(encoder, "mobilenet_v2_s8", 32, tmp_path)
    assert other._disk is None
    cache.close()
    root = tmp_path / cache.namespace
    with open(root / "features.f32", "ab") as fh:  # a row written, its key never: a killed process
        fh.write(b"\0" * 100)
    with open(root / "keys.txt", "a") as fh:  # and a key cut short
        fh.write("abc")
    reopened = FeatureCache(encoder, "mobilenet_v2_s8", 32, tmp_path)
    assert len(reopened) == 3
    again, _ = reopened.features(images)
    assert torch.equal(again, feats) and reopened.stats.misses == 0  # read back from the memory map, no compute
    assert (root / "features.f32").stat().st_size == 3 * feats[0].numel() * 4
    reopened.features(_photos(1, seed=9))
    assert len(FeatureCache(encoder, "mobilenet_v2_s8", 32)) == 0  # memory caches share nothing
    reopened.close()
    assert len(FeatureCache(encoder, "mobilenet_v2_s8", 32, tmp_path)) == 4


def test_cached_pairs_stop_loading_images_once_their_keys_are_known(pairs):
    loads = []
    counting = type(pairs)(pairs.expressions, pairs.name, False, lambda p: loads.append(p) or load_image(p))
    view = CachedPairs(counting)
    index, key, text, image = view[0]
    assert image is not None and key == image_key(image) and text == pairs.expressions[0].text and len(loads) == 1
    from training.feature_cache import CachedImages

    view.remember(CachedImages([0], [key], [image]))
    assert view[0] == (0, key, text, None) and len(loads) == 1  # no image read the second time


# ---- the loop and fine-tuning ---------------------------------------------------------------------------------------

def _config(**kw):
    base = dict(max_steps=3, batch_size=6, lr=1e-3, warmup_steps=0, grad_clip=1.0, log_every=1, seed=7,
                checkpoint_every=100, keep_last=10, freeze_image_backbone=True, resume=False)
    base.update(kw)
    return TrainConfig(**base)


def test_cached_training_gives_the_same_losses_as_the_live_backbone(pairs, tmp_path):
    """Same seed, dropout off (tiny_config): the cached loop and the live frozen backbone agree step for step."""
    runs = {}
    for mode in ("off", "memory", "disk"):
        model = _mobilenet_model()
        before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
        trainer = Trainer(model, pairs, _config(feature_cache=mode), tmp_path / mode, show_progress=False)
        assert (trainer.feature_cache is None) == (mode == "off")
        runs[mode] = [r["loss"] for r in trainer.fit().history if "loss" in r]
        # Frozen is eval mode even for the live backbone: BatchNorm neither normalises with batch statistics nor
        # updates its running ones, which is what makes live and cached features the same function of the image.
        assert all(torch.equal(before[k], v) for k, v in model.image_encoder.state_dict().items())
    assert len(runs["off"]) == 3
    for mode in ("memory", "disk"):
        assert runs[mode] == pytest.approx(runs["off"], rel=1e-5, abs=1e-6)
    assert (tmp_path / "disk" / "feature-cache").is_dir() and not (tmp_path / "memory" / "feature-cache").exists()


def test_warm_cache_steps_never_run_the_backbone_and_batchnorm_stays_frozen(pairs, tmp_path):
    model = _mobilenet_model()
    before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    calls = []
    model.image_encoder.register_forward_hook(lambda *a: calls.append(a[1][0].shape[0]))
    # 40 scenes -> ~70 pairs -> 11 batches of 6: 25 steps run more than two epochs.
    trainer = Trainer(model, pairs, _config(max_steps=25, batch_size=6), tmp_path, show_progress=False)
    result = trainer.fit()
    images = len({e.image for e in pairs.expressions})
    stats = trainer.feature_cache.stats
    # Every image's features were computed exactly once (1 extra call: the cache's grid probe) ...
    assert stats.entries == stats.misses <= images and sum(calls) == stats.misses + 1
    assert stats.hits + stats.misses == 25 * 6
    # ... and the last records show steps with hits only.
    logs = [r for r in result.history if "cache_misses" in r]
    assert logs[-1]["cache_misses"] == logs[-5]["cache_misses"] and logs[-1]["cache_hits"] > logs[-5]["cache_hits"]
    # Frozen means eval mode too: BatchNorm running statistics did not move with the batches.
    assert all(torch.equal(before[k], v) for k, v in model.image_encoder.state_dict().items())
    assert all(math.isfinite(r["loss"]) for r in logs)


def test_time_budget_stops_with_a_checkpoint(pairs, tmp_path):
    result = Trainer(_mobilenet_model(), pairs, _config(max_steps=50, time_budget_s=0.0), tmp_path,
                     show_progress=False).fit()
    assert result.steps == 1 and result.last_checkpoint is not None and result.last_checkpoint.is_dir()


def test_preset_builds_pretrained_image_side_and_reinitialised_text():
    preset = get_preset("cpu-synthetic-mobilenet")
    plain = get_preset("cpu-synthetic")
    # Only the image side differs from cpu-synthetic (which stays as it was).
    assert preset.model.replace(image_backbone="vit_tiny_test", image_weights=None, image_size=96) == plain.model
    assert preset.train == plain.train and preset.train.freeze_image_backbone and preset.pretrained
    model = build_model(get_preset("cpu-synthetic-mobilenet", model={"image_size": 32}))
    spread = model.encode_text(**model.tokenize(["the red circle", "the leftmost blue star"])).std(0).mean()
    assert spread > 0.05  # the re-initialised tiny BERT (0.02 init gives ~0.006, see presets.py)


def test_finetune_with_a_frozen_cached_backbone(tmp_path):
    from training.finetune import FinetuneConfig, finetune, project_data
    from training.registry import Registry

    reg = Registry(tmp_path / "models")
    reg.promote(reg.add(_mobilenet_model(), {"preset": "tiny"}).id)
    parent = reg.current()
    paths = []
    for i, photo in enumerate(_photos(6)):
        paths.append(str(tmp_path / f"img{i}.png"))
        photo.save(paths[-1])
    tasks = [{"id": i, "data": {"image": p, "text": f"the thing number {i}"}} for i, p in enumerate(paths)]
    config = FinetuneConfig(steps=4, batch_size=6, lr=1e-3, checkpoint_every=2, show_progress=False,
                            freeze_image_backbone=True)
    result = finetune(reg, project_data(tasks, "image", ("text",), load_image), config, tmp_path / "run")
    old, new = SaG.from_pretrained(reg.get(parent).path), SaG.from_pretrained(reg.get(result.version).path)
    assert all(torch.equal(a, b) for a, b in zip(old.image_encoder.state_dict().values(),
                                                 new.image_encoder.state_dict().values()))
    assert not torch.equal(old.fusion.to_q.weight, new.fusion.to_q.weight)
    assert reg.get(result.version).metadata["finetune"]["freeze_image_backbone"] is True
