import collections
import pickle
import subprocess
import sys

import numpy as np
import pytest

from training.datasets.refcoco import refer_dataset
from training.datasets.synthetic import synthetic_dataset
from training.synthetic import (
    COLOURS, HELD_OUT_PAIRS, KINDS, SHAPES, SPLITS, SyntheticConfig, bag_of_words_oracle, generate_scene, resolve,
    write_benchmark,
)

from .conftest import SMALL

CFG = SyntheticConfig(image_size=64)


def _scenes(split, n=120):
    return [s for s in (generate_scene(CFG, split, i) for i in range(n)) if s is not None]


def test_scenes_are_deterministic_by_seed():
    a, b = generate_scene(CFG, "train", 5), generate_scene(CFG, "train", 5)
    assert np.array_equal(a.image, b.image) and a.expressions == b.expressions and a.objects == b.objects
    other = generate_scene(SyntheticConfig(seed=1, image_size=64), "train", 5)
    assert other is None or not np.array_equal(a.image, other.image)


def test_scene_contents_follow_the_spec():
    scenes = _scenes("train")
    for s in scenes:
        assert CFG.min_objects <= len(s.objects) <= CFG.max_objects
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        assert s.masks.shape == (len(s.objects), 64, 64)
        assert s.masks.any(axis=(1, 2)).all(), "every object is visible"
        assert s.masks.sum(axis=0).max() <= 1, "objects do not overlap"
        for o in s.objects:
            assert o.colour in COLOURS and o.shape in SHAPES and o.size in ("small", "large")
    repeated = sum(len({(o.colour, o.shape) for o in s.objects}) < len(s.objects) for s in scenes)
    assert repeated > len(scenes) / 4, "scenes often repeat a (colour, shape) pair"


@pytest.mark.parametrize("split", SPLITS)
def test_every_expression_identifies_exactly_its_target(split):
    for s in _scenes(split, 80):
        for e in s.expressions:
            assert resolve(s.objects, e.text, CFG.margin) == [e.target], e.text


def test_targets_respect_the_compositional_split():
    held = set(HELD_OUT_PAIRS)
    for split in ("train", "val", "test"):
        for s in _scenes(split, 60):
            assert all((s.objects[e.target].colour, s.objects[e.target].shape) not in held for e in s.expressions)
    comp = _scenes("compositional", 60)
    assert comp
    assert all((s.objects[e.target].colour, s.objects[e.target].shape) in held for s in comp for e in s.expressions)
    # held-out pairs still appear in training scenes, as distractors or landmarks
    assert any((o.colour, o.shape) in held for s in _scenes("train", 60) for o in s.objects)


def test_bag_of_words_cannot_solve_it():
    scenes = _scenes("test", 150)
    exprs = [(s, e) for s in scenes for e in s.expressions]
    kinds = collections.Counter(e.kind for _, e in exprs)
    assert set(kinds) == set(KINDS)
    accuracy = np.mean([bag_of_words_oracle(s.objects, e.text) == e.target for s, e in exprs])
    assert accuracy < 0.75
    # position and relation expressions mostly name a (colour, shape) that is not unique in the scene
    positional = [(s, e) for s, e in exprs if e.kind != "attribute"]
    ambiguous = [sum(o.colour in e.text.split() and o.shape in e.text.split() for o in s.objects) != 1
                 for s, e in positional]
    assert np.mean(ambiguous) > 0.3


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="min_objects"):
        SyntheticConfig(min_objects=1)
    with pytest.raises(ValueError, match="unknown splits"):
        SyntheticConfig(scenes={"training": 3})
    with pytest.raises(ValueError, match="held-out pair"):
        SyntheticConfig(held_out=(("pink", "circle"),))


def test_written_benchmark_loads_through_the_refer_loader(synthetic_root):
    root = synthetic_root / "synthetic"
    with open(root / "refs(synthetic).p", "rb") as fh:
        refs = pickle.load(fh)
    by_split = collections.Counter(r["split"] for r in refs)
    assert set(by_split) == set(SPLITS)
    for split in SPLITS:
        ds = refer_dataset(synthetic_root, "synthetic", split)
        assert len(ds) == by_split[split]
        images = {e.image for e in ds.expressions}
        assert all(f"/{split}_" in p for p in images), "images are not shared across splits"
        sample = ds[0]
        index = int(sample.image_id)
        assert sample.mask.shape == (64, 64) and sample.mask.any()
        # the mask in instances.json is the generator's mask of the referred object
        scene = generate_scene(SMALL, split, int(ds.expressions[0].image.rsplit("_", 1)[1][:6]))
        target = next(e for e in scene.expressions if e.text == sample.text)
        assert np.array_equal(sample.mask, scene.masks[target.target]), index
        assert np.array_equal(np.asarray(sample.image), scene.image)


def test_regeneration_is_byte_identical(synthetic_root, tmp_path):
    again = write_benchmark(tmp_path / "again", SMALL, progress=False)
    for name in ("instances.json", "refs(synthetic).p"):
        assert (again / name).read_bytes() == (synthetic_root / "synthetic" / name).read_bytes()


def test_command_line_writes_the_layout(tmp_path):
    from training.synthetic.__main__ import main

    assert main(["--out", str(tmp_path / "s"), "--train", "3", "--val", "2", "--test", "0", "--compositional", "2",
                 "--image-size", "32"]) == 0
    assert {p.name for p in (tmp_path / "s").iterdir()} == {"images", "instances.json", "refs(synthetic).p",
                                                            "synthetic.json"}
    assert synthetic_dataset(tmp_path, "compositional", name="s")[0].mask.shape == (32, 32)


def test_the_old_command_is_an_alias_of_the_new_one(tmp_path):
    from training.synthetic.__main__ import main

    flags = ["--train", "3", "--val", "2", "--test", "0", "--compositional", "2", "--image-size", "32", "--seed", "4"]
    assert main(["--out", str(tmp_path / "new"), *flags]) == 0
    # a real `python -m`, since older notes show that command line
    subprocess.run([sys.executable, "-m", "training.datasets.synthetic", "--out", str(tmp_path / "old"), *flags],
                   check=True, capture_output=True)
    files = sorted(p.relative_to(tmp_path / "new") for p in (tmp_path / "new").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "old") for p in (tmp_path / "old").rglob("*") if p.is_file())
    assert all((tmp_path / "new" / f).read_bytes() == (tmp_path / "old" / f).read_bytes() for f in files)
