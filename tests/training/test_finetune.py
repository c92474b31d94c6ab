"""The fine-tuning job body: text-only pairs from Label Studio tasks, the promotion rule, lineage, and refusal of a
candidate trained on shuffled texts when hand-corrected masks exist (file registry, tiny model)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from sag import SaG, tiny_config
from sag.pipeline import predict
from training.datasets.base import load_image
from training.engine import Trainer
from training.finetune import (
    FINETUNE_RECIPES,
    FinetuneConfig,
    FinetuneError,
    finetune,
    project_data,
    promotion_decision,
)
from training.registry import Registry, main
from training.retrieval import RetrievalScores, heldout_entities, hold_out, retrieval_scores


def _rle(mask: np.ndarray) -> list[int]:
    from label_studio_converter.brush import mask2rle

    return mask2rle(np.where(mask, 255, 0).astype(np.uint8))


def brush_annotation(mask: np.ndarray, **extra) -> dict:
    h, w = mask.shape
    return {"id": 100, "result": [{"type": "brushlabels", "from_name": "mask", "to_name": "image",
                                   "original_height": h, "original_width": w,
                                   "value": {"format": "rle", "rle": _rle(mask), "brushlabels": ["Object"]}}],
            **extra}


def prompt_annotation(text: str, **extra) -> dict:
    return {"id": 101, "result": [{"type": "textarea", "from_name": "prompt", "to_name": "image",
                                   "value": {"text": [text]}}], **extra}


@pytest.fixture
def scenes(tmp_path):
    """Six small images, each one coloured square on noise, and the text naming its colour."""
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230), "yellow": (240, 220, 40),
               "purple": (150, 50, 190), "orange": (245, 135, 25)}
    out = []
    for i, (name, rgb) in enumerate(colours.items()):
        image = rng.integers(0, 80, (48, 48, 3)).astype(np.uint8)
        y, x = rng.integers(4, 24, 2)
        image[y:y + 20, x:x + 20] = rgb
        path = tmp_path / f"img{i}.png"
        Image.fromarray(image).save(path)
        out.append((str(path), f"the {name} square"))
    return out


@pytest.fixture
def registry(tmp_path) -> Registry:
    torch.manual_seed(0)
    reg = Registry(tmp_path / "models")
    reg.promote(reg.add(SaG(tiny_config(image_size=32)), {"preset": "tiny", "trained": False}).id)
    return reg


FAST = FinetuneConfig(steps=4, batch_size=6, lr=1e-3, checkpoint_every=2, show_progress=False)
UNCHECKED = replace(FAST, promote_unchecked=True)  # these tiny projects are too small for the retrieval check


def test_fine_tuning_steps_follow_the_pair_count_up_to_the_cap():
    derived = FinetuneConfig(epochs=20, max_steps=200, batch_size=16)
    assert derived.steps_for(3) == 20  # one batch of 3 per epoch
    assert derived.steps_for(100) == 20 * 7  # ceil(100 / 16) batches per epoch
    assert derived.steps_for(1000) == 200  # capped
    assert FinetuneConfig(steps=5).steps_for(1000) == 5  # an explicit count wins
    with pytest.raises(ValueError, match="steps"):
        FinetuneConfig(steps=0)


def test_promotion_decision():
    unchecked = promotion_decision(None, None, 0.0, 0)  # no masks, no held-out pairs: nothing shows it is not worse
    assert not unchecked.promote and "too few" in unchecked.reason
    assert promotion_decision(None, None, 0.0, 0, promote_unchecked=True).promote  # the owner's explicit choice
    better, worse = RetrievalScores(0.6, 0.2, 1.0, 20, 10), RetrievalScores(0.4, 0.3, 1.5, 20, 10)
    assert promotion_decision(None, None, 0.0, 0, (better, worse)).promote
    assert "retrieval on 20 held-out pair(s) of 10 image(s)" in promotion_decision(None, None, 0.0, 0,
                                                                                   (better, worse)).reason
    assert not promotion_decision(None, None, 0.0, 0, (worse, better)).promote
    # the tolerance is in nats of loss; the rank must not be worse
    assert promotion_decision(None, None, 0.0, 0, (RetrievalScores(0.4, 0.2, 1.5, 20, 10), better),
                              heldout_tolerance=0.5).promote
    # loss and rank decide, not the top-1 accuracy (near chance on a few dozen look-alike images)
    assert not promotion_decision(None, None, 0.0, 0, (RetrievalScores(0.9, 0.1, 1.2, 20, 10), better)).promote
    # where the image side trained, its entities must still reconstruct the held-out images
    explains, blurs = replace(better, reconstruction=0.30), replace(worse, reconstruction=0.40)
    assert promotion_decision(None, None, 0.0, 0, (explains, blurs)).promote
    broke = promotion_decision(None, None, 0.0, 0, (replace(better, reconstruction=0.41), blurs))
    assert not broke.promote and "reconstruction of the held-out images: candidate 0.4100" in broke.reason
    assert promotion_decision(None, None, 0.0, 0, (explains, worse)).promote  # measured on one side only: ignored
    sharper = RetrievalScores(0.6, 0.25, 0.8, 20, 10)  # a lower loss from sharper scores, own images ranked lower
    assert not promotion_decision(None, None, 0.0, 0, (sharper, better)).promote
    assert not promotion_decision(None, None, 0.0, 0, (RetrievalScores(0.9, 0.1, float("nan"), 20, 10),
                                                       worse)).promote
    # masks, when annotators corrected some, decide over the retrieval
    assert not promotion_decision(0.40, 0.50, 0.0, 3, (better, worse)).promote
    assert promotion_decision(0.50, 0.50, 0.0, 3).promote  # not worse
    assert promotion_decision(0.49, 0.50, 0.02, 3).promote  # within tolerance
    refused = promotion_decision(0.40, 0.50, 0.02, 3)
    assert not refused.promote and "worse" in refused.reason
    assert not promotion_decision(float("nan"), 0.5, 0.0, 3).promote
    with pytest.raises(ValueError):
        promotion_decision(None, 0.5, 0.0, 3)
    with pytest.raises(ValueError):
        promotion_decision(0.5, 0.5, -0.1, 3)


def test_project_data_pairs_never_carry_masks(scenes):
    (img0, text0), (img1, text1), (img2, _) = scenes[:3]
    mask = np.zeros((48, 48), bool)
    mask[5:20, 5:20] = True
    tasks = [
        {"id": 1, "data": {"image": img0, "text": text0}, "annotations": [brush_annotation(mask)],
         "predictions": [7]},
        {"id": 2, "data": {"image": img1, "text": [text1, "the square"]}, "annotations": []},
        {"id": 3, "data": {"image": img2}, "annotations": [prompt_annotation("a typed prompt")]},
        {"id": 4, "data": {"image": img2}, "annotations": [prompt_annotation("cancelled", was_cancelled=True)]},
        {"id": 5, "data": {"text": "no image here"}},
        {"id": 6, "data": {"image": img0 + ".missing.png", "text": "an image that is gone"}},
    ]
    fetched = []
    data = project_data(tasks, "image", ("text", "prompt"), load_image,
                        progress=lambda done, total: fetched.append((done, total)))
    assert fetched == [(i, 6) for i in range(1, 7)]  # one report per task, the last when all are read
    assert sorted(data.pairs.texts) == sorted([text0, text1, "the square", "a typed prompt"])
    assert data.pairs.with_masks is False
    assert all(e.mask is None for e in data.pairs.expressions)
    assert all(data.pairs[i].mask is None for i in range(len(data.pairs)))
    assert data.validation_size == 1 and data.validation[0].mask.sum() == mask.sum()
    assert data.images == 3 and [reason.split(":")[0] for reason in data.skipped] == ["task 5", "task 6"]
    assert "image not found" in data.skipped[1]


def test_a_project_too_small_to_check_is_stored_but_not_promoted(scenes, registry, tmp_path):
    """Six pairs on six images, no masks: holding images out would leave fewer pairs to train on than to check
    with, so nothing can show the candidate is not worse: stored, listed, not served."""
    parent = registry.current()
    tasks = [{"id": i, "data": {"image": img, "text": text}} for i, (img, text) in enumerate(scenes)]
    result = finetune(registry, project_data(tasks, "image", ("text",), load_image), FAST, tmp_path / "run")
    assert not result.promoted and "too few" in result.reason
    assert registry.current() == parent and result.version in [v.id for v in registry.versions()]


def test_finetune_without_masks_promotes_and_records_lineage(scenes, registry, tmp_path):
    parent = registry.current()
    serving_files = {p.name: p.read_bytes() for p in registry.get(parent).path.iterdir() if p.is_file()}
    tasks = [{"id": i, "data": {"image": img, "text": text}} for i, (img, text) in enumerate(scenes)]
    steps = []
    result = finetune(registry, project_data(tasks, "image", ("text",), load_image), UNCHECKED, tmp_path / "run",
                      metadata={"label_studio_project": 3}, report=lambda info: steps.append(info))
    assert result.promoted and "without a check" in result.reason
    assert registry.current() == result.version != parent
    meta = registry.get(result.version).metadata
    assert meta["parent"] == parent and meta["pairs"] == 6 and meta["label_studio_project"] == 3
    assert meta["trained_on"]["validation_masks"] == 0 and meta["promotion"]["promoted"] is True
    stages = list(dict.fromkeys(s["stage"] for s in steps))
    assert stages == ["loading", "caching image features", "training", "saving", "promoted"]
    caching = [s for s in steps if s["stage"] == "caching image features"]
    assert caching[-1]["done"] == caching[-1]["total"] == 6 and caching[-1]["eta_s"] == 0
    assert steps[-1]["reason"] == result.reason
    assert [s["step"] for s in steps if s.get("stage") == "training"] == [0, 1, 2, 3, 4]
    assert all(s["total"] == 4 for s in steps if s.get("stage") == "training")
    etas = [s["eta_s"] for s in steps if s.get("stage") == "training"]
    assert etas[:2] == [None, None] and all(e >= 0 for e in etas[2:]) and etas[-1] == 0  # from the 2nd step on
    assert not (tmp_path / "run").exists()  # the run's own checkpoints are gone once the version is stored
    assert {p.name: p.read_bytes() for p in registry.get(parent).path.iterdir() if p.is_file()} == serving_files
    assert [v.id for v in registry.versions()] == sorted([parent, result.version])


def test_sag_models_lists_lineage_and_rolls_back(scenes, registry, tmp_path, capsys):
    parent = registry.current()
    tasks = [{"id": i, "data": {"image": img, "text": text}} for i, (img, text) in enumerate(scenes)]
    new = finetune(registry, project_data(tasks, "image", ("text",), load_image), UNCHECKED, tmp_path / "run").version
    cli = ["--model-dir", str(registry.root), "--redis-url", ""]
    assert main([*cli, "list"]) == 0
    lines = {line[2:].split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines[new].startswith("* ") and lines[parent].startswith("  ")
    listed = json.loads(lines[new][lines[new].index("{"):])  # the metadata follows the figure columns
    assert listed["parent"] == parent and listed["trained_on"]["pairs"] == 6
    assert main([*cli, "rollback", parent]) == 0 and registry.current() == parent
    assert main([*cli, "rollback"]) == 0 and registry.current() == new  # back to the one promoted before


def test_candidate_trained_on_shuffled_texts_is_not_promoted(scenes, registry, tmp_path):
    """Three tasks carry masks that annotators accepted from the serving model (so it scores mIoU 1 on them); the
    other tasks pair every image with another image's text. The candidate fine-tuned on them must not be served."""
    parent = registry.current()
    serving = SaG.from_pretrained(registry.get(parent).path)
    texts = [t for _, t in scenes]
    tasks = []
    for i, (img, text) in enumerate(scenes[:3]):
        with torch.no_grad():
            [seg] = predict(serving, [load_image(img)], [text])
        tasks.append({"id": 100 + i, "data": {"image": img, "text": text},
                      "annotations": [brush_annotation(seg.mask.cpu().numpy())]})
    for i, (img, _) in enumerate(scenes):
        tasks.append({"id": i, "data": {"image": img, "text": texts[(i + 1) % len(texts)]}})
    data = project_data(tasks, "image", ("text",), load_image)
    assert (len(data.pairs), data.validation_size) == (9, 3)
    result = finetune(registry, data, FAST, tmp_path / "run")
    assert not result.promoted, result.reason
    assert registry.current() == parent
    meta = registry.get(result.version).metadata  # stored for inspection, listed, not served
    assert meta["promotion"]["promoted"] is False and "worse" in meta["promotion"]["reason"]
    assert meta["metrics"]["parent_val_mIoU"] == pytest.approx(1.0)
    assert meta["metrics"]["val_mIoU"] < meta["metrics"]["parent_val_mIoU"]


def test_finetune_refuses_a_project_without_pairs(scenes, registry, tmp_path):
    img, text = scenes[0]
    data = project_data([{"id": 1, "data": {"image": img, "text": text}}], "image", ("text",), load_image)
    with pytest.raises(FinetuneError, match="at least 2"):
        finetune(registry, data, FAST, tmp_path / "run")
    assert len(registry.versions()) == 1


@pytest.fixture
def colour_scenes(tmp_path):
    """32 images of one coloured square on noise, 8 colours 4 times each, and the text naming the colour: a project
    large enough to hold images out, whose held-out colours also occur in training."""
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230), "yellow": (240, 220, 40),
               "purple": (150, 50, 190), "orange": (245, 135, 25), "white": (250, 250, 250), "cyan": (0, 220, 220)}
    tasks = []
    for i in range(32):
        name = list(colours)[i % len(colours)]
        image = rng.integers(0, 80, (48, 48, 3)).astype(np.uint8)
        y, x = rng.integers(4, 24, 2)
        image[y:y + 20, x:x + 20] = colours[name]
        path = tmp_path / f"colour{i}.png"
        Image.fromarray(image).save(path)
        tasks.append({"id": i, "data": {"image": str(path), "text": f"the {name} square"}})
    return project_data(tasks, "image", ("text",), load_image)


def test_held_out_pairs_are_whole_images_never_trained_on(colour_scenes):
    train, held = hold_out(colour_scenes.pairs, fraction=0.2, minimum=4, maximum=200, seed=1)
    assert len(train) + len(held) == len(colour_scenes.pairs) and len(held) >= round(0.2 * 32)
    assert not {e.image for e in train.expressions} & {e.image for e in held.expressions}
    again, held_again = hold_out(colour_scenes.pairs, fraction=0.2, minimum=4, maximum=200, seed=1)
    assert held_again.texts == held.texts  # seeded: a resumed job holds out the same pairs
    assert hold_out(colour_scenes.pairs.subset(range(6)), 0.2, 4, 200)[1] is None  # too small: nothing held out


def test_the_held_out_reconstruction_is_measured_on_fixed_positions(colour_scenes, registry):
    _, heldout = hold_out(colour_scenes.pairs, 0.2, 4, 200, seed=1)
    model = SaG.from_pretrained(registry.get(registry.current()).path)
    sampled = retrieval_scores(model, heldout, recon_positions=5).reconstruction
    assert sampled == retrieval_scores(model, heldout, recon_positions=5).reconstruction  # the same positions
    entities = heldout_entities(model, heldout)
    assert retrieval_scores(model, heldout, entities=entities).reconstruction is None  # given entities: not measured
    images = [heldout.image_loader(p) for p in sorted({e.image for e in heldout.expressions})]
    with torch.no_grad():
        image = model.encode_image(model.preprocess(images))
        full = float((model.decoder(image.entities, image.grid)[0] - image.features).square().mean())
    assert retrieval_scores(model, heldout, recon_positions=10**6).reconstruction == pytest.approx(full, rel=1e-5)
    assert sampled != pytest.approx(full, rel=1e-6)  # 5 of the grid's positions: an estimate, not the whole


def test_without_masks_a_fine_tune_that_learns_is_promoted_and_a_broken_one_is_not(colour_scenes, registry,
                                                                                    tmp_path):
    """The mask-free check: text-to-image retrieval on held-out images. Learning the colour words raises it above
    the random serving model's, and the candidate is promoted; then a run with a far too high learning rate
    breaks the text side, its retrieval falls below the promoted version's, and it is stored but not served."""
    seen: list[list[str]] = []

    class Spy(Trainer):
        def __init__(self, model, train_data, *args, **kwargs):
            seen.append([e.image for e in train_data.expressions])
            super().__init__(model, train_data, *args, **kwargs)

    config = FinetuneConfig(steps=200, batch_size=8, lr=3e-3, checkpoint_every=100, show_progress=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("training.engine.Trainer", Spy)
        good = finetune(registry, colour_scenes, config, tmp_path / "good")
    meta = registry.get(good.version).metadata
    held, parent_held = meta["metrics"]["heldout_retrieval"], meta["metrics"]["parent_heldout_retrieval"]
    assert good.promoted and "retrieval" in good.reason and registry.current() == good.version
    assert held["accuracy"] > parent_held["accuracy"] and held["loss"] < parent_held["loss"]
    assert held["rank"] < parent_held["rank"]
    assert meta["trained_on"]["pairs"] + meta["trained_on"]["heldout_pairs"] == 32
    _, heldout = hold_out(colour_scenes.pairs, config.heldout_fraction, config.heldout_min_pairs,
                          config.heldout_max_pairs, seed=config.seed)
    assert not set(seen[0]) & {e.image for e in heldout.expressions}  # the trainer never saw a held-out image
    # the held-out entities were computed once, before training (the image side is fixed): the candidate's own
    # image side gives the same scores
    fresh = retrieval_scores(SaG.from_pretrained(registry.get(good.version).path), heldout,
                             config.eval_batch_size).to_dict()
    assert fresh["accuracy"] == held["accuracy"] and fresh["rank"] == pytest.approx(held["rank"], abs=2e-4)
    assert fresh["loss"] == pytest.approx(held["loss"], abs=2e-4)

    broken = finetune(registry, colour_scenes, replace(config, steps=20, lr=1.0), tmp_path / "broken")
    assert not broken.promoted and registry.current() == good.version, broken.reason
    assert "worse" in broken.reason or "NaN" in broken.reason


def test_the_fast_recipe_trains_entity_discovery_cheaply_and_the_paper_recipe_is_one_name_away():
    fast, paper, text = FINETUNE_RECIPES["fast"], FINETUNE_RECIPES["paper"], FINETUNE_RECIPES["text"]
    assert fast.freeze_image_backbone and fast.feature_cache and not fast.freeze_image_side
    assert fast.train_only() == ("entity", "text_encoder.backbone.embeddings") and fast.new_words
    assert fast.entity_grad_iterations == 1 and fast.recon_positions and fast.reconstruction
    assert fast.grouping_distill > 0 and text.grouping_distill == paper.grouping_distill == 0
    with pytest.raises(ValueError, match="grouping_distill needs entity discovery trained"):
        FinetuneConfig(grouping_distill=1.0)  # the default keeps the image side, entity discovery too, fixed
    assert text == FinetuneConfig() and text.freeze_image_side  # the default before: entities fixed
    assert not (paper.freeze_image_side or paper.freeze_image_backbone)
    assert paper.entity_grad_iterations is None and paper.recon_positions is None and paper.trainable is None
    with pytest.raises(ValueError, match="freeze_image_side"):
        FinetuneConfig(freeze_image_backbone=False, freeze_image_side=True)


def _weights(registry: Registry, version: str) -> dict[str, torch.Tensor]:
    return SaG.from_pretrained(registry.get(version).path).state_dict()


def test_trainable_parts_change_and_every_other_part_keeps_its_weights(scenes, registry, tmp_path):
    parent = registry.current()
    tasks = [{"id": i, "data": {"image": img, "text": text}} for i, (img, text) in enumerate(scenes)]
    config = replace(UNCHECKED, trainable=("word_embeddings", "fusion"), backbone_lr_scale=1.0, lr=1e-2)
    result = finetune(registry, project_data(tasks, "image", ("text",), load_image), config, tmp_path / "run")
    before, after = _weights(registry, parent), _weights(registry, result.version)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trained = ("text_encoder.backbone.embeddings.", "fusion.")
    assert changed and all(k.startswith(trained) for k in changed), sorted(changed)
    assert any(k.startswith("fusion.") for k in changed)
    assert "text_encoder.backbone.embeddings.word_embeddings.weight" in changed
    assert registry.get(result.version).metadata["finetune"]["trainable"] == ["word_embeddings", "fusion"]


def test_new_words_get_their_own_embedding_rows_and_old_words_keep_theirs(registry, tmp_path):
    """Words the tiny tokenizer spells out in characters ("hexagon", "heart") become whole tokens whose rows start
    at the mean of their pieces'; with only the fusion trained, every existing row is unchanged."""
    rng = np.random.default_rng(1)
    tasks = []
    for i, text in enumerate(["the red hexagon", "a blue heart", "the hexagon on the left", "a green heart",
                              "the big hexagon", "the heart at the top"]):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (48, 48, 3)).astype(np.uint8)).save(path)
        tasks.append({"id": i, "data": {"image": str(path), "text": text}})
    parent = registry.current()
    config = replace(UNCHECKED, new_words=True, trainable=("fusion",))
    result = finetune(registry, project_data(tasks, "image", ("text",), load_image), config, tmp_path / "run")
    assert sorted(registry.get(result.version).metadata["trained_on"]["new_words"]) == ["heart", "hexagon"]
    old, new = SaG.from_pretrained(registry.get(parent).path), SaG.from_pretrained(registry.get(result.version).path)
    assert new.text_encoder.tokenizer.tokenize("The hexagon, hearts") == ["the", "hexagon", ","] + \
        old.text_encoder.tokenizer.tokenize("hearts")  # whole words only: "hearts" is still spelled out
    old_rows = old.text_encoder.backbone.get_input_embeddings().weight
    new_rows = new.text_encoder.backbone.get_input_embeddings().weight
    assert new_rows.shape[0] == old_rows.shape[0] + 2 and torch.equal(new_rows[:old_rows.shape[0]], old_rows)
    tok = old.text_encoder.tokenizer
    pieces = tok.convert_tokens_to_ids(tok.tokenize("hexagon"))
    row = new.text_encoder.tokenizer.convert_tokens_to_ids("hexagon")
    assert torch.allclose(new_rows[row], old_rows[pieces].mean(dim=0))


def test_trainable_names_parts_the_image_side_settings_allow():
    with pytest.raises(ValueError, match="unknown"):
        FinetuneConfig(trainable=("wings",))
    with pytest.raises(ValueError, match="entity"):
        FinetuneConfig(trainable=("entity", "fusion"))  # the fast recipe keeps the image side fixed
    config = FinetuneConfig(trainable=["entity", "fusion"], freeze_image_side=False)
    assert config.train_only() == ("entity", "fusion") and FinetuneConfig().train_only() is None


def test_the_words_recipe_trains_only_the_word_embeddings_with_new_rows():
    words = FINETUNE_RECIPES["words"]
    assert words.new_words and words.train_only() == ("text_encoder.backbone.embeddings",)
    assert words.freeze_image_side and FINETUNE_RECIPES["text"].trainable is None


def test_entity_discovery_trains_without_reconstruction_and_the_candidate_keeps_the_loss_weights(scenes, registry,
                                                                                                 tmp_path):
    parent = registry.current()
    tasks = [{"id": i, "data": {"image": img, "text": text}} for i, (img, text) in enumerate(scenes)]
    config = replace(UNCHECKED, freeze_image_side=False, reconstruction=False, trainable=("entity",), lr=1e-2)
    result = finetune(registry, project_data(tasks, "image", ("text",), load_image), config, tmp_path / "run")
    before, after = _weights(registry, parent), _weights(registry, result.version)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("entity.") for k in changed), sorted(changed)
    candidate = SaG.from_pretrained(registry.get(result.version).path)
    assert candidate.config.recon_weight == SaG.from_pretrained(registry.get(parent).path).config.recon_weight == 1.0


def test_the_fast_recipe_changes_only_entity_discovery_and_the_word_embeddings(scenes, registry, tmp_path):
    """The button's default, shortened: every weight outside entity discovery and the word embeddings is the
    serving version's, the decoder included (it only carries the reconstruction loss), and the trainer hands the
    model back with the full slot gradient."""
    parent = registry.current()
    tasks = [{"id": i, "data": {"image": img, "text": text}} for i, (img, text) in enumerate(scenes)]
    config = replace(FINETUNE_RECIPES["fast"], steps=4, batch_size=4, lr=1e-2, recon_positions=3,
                     promote_unchecked=True, show_progress=False)
    result = finetune(registry, project_data(tasks, "image", ("text",), load_image), config, tmp_path / "run")
    before, after = _weights(registry, parent), _weights(registry, result.version)
    changed = {k for k in before if k in after and not torch.equal(before[k], after[k])}
    assert any(k.startswith("entity.") for k in changed), sorted(changed)
    assert all(k.startswith(("entity.", "text_encoder.backbone.embeddings.")) for k in changed), sorted(changed)
    meta = registry.get(result.version).metadata["finetune"]
    assert (meta["entity_grad_iterations"], meta["recon_positions"]) == (1, 3)
