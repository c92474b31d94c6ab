import collections
import dataclasses
import hashlib
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from training.datasets.refcoco import refer_dataset
from training.datasets.synthetic import synthetic_dataset
from training.synthetic import (
    COLOURS,
    DOMAINS,
    HELD_OUT_PAIRS,
    KINDS,
    SHAPES,
    SPLITS,
    DomainConfig,
    SyntheticConfig,
    bag_of_words_oracle,
    generate_scene,
    resolve,
    synthetic_config,
    write_benchmark,
)

from .conftest import SMALL

CFG = SyntheticConfig(image_size=64)
SHIFT = DomainConfig(image_size=64, scenes={"train": 60, "val": 20, "test": 20, "compositional": 8})


def _scenes(split, n=120, config=CFG):
    return [s for s in (generate_scene(config, split, i) for i in range(n)) if s is not None]


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


def test_the_base_domain_generates_what_it_always_did():
    # Digest of the expressions, targets and mask areas of the base generator before the shift domain existed: the
    # benchmark's checkpoints and tables hold only while its scenes stay the same.
    rows = []
    for split in ("train", "compositional"):
        for i in range(30):
            s = generate_scene(SMALL, split, i)
            if s:
                rows.append([[e.kind, e.text, e.target] for e in s.expressions] + [s.masks.sum(axis=(1, 2)).tolist()])
    assert hashlib.sha256(json.dumps(rows).encode()).hexdigest() == \
        "9e2b5e759509ba503eba126861d64d60cf4baad8f0339f8009e919078e3bad0c"
    # bench/synthetic_benchmark.py reuses generated data only when synthetic.json equals the config's fields
    assert "domain" not in {f.name for f in dataclasses.fields(SyntheticConfig)}


def _words(scenes):
    return {w for s in scenes for e in s.expressions for w in e.text.split()}


def test_the_shift_domain_names_nothing_the_base_domain_does():
    base, shift = DOMAINS["base"], DOMAINS["shift"]
    assert not set(base.colours) & set(shift.colours) and not set(base.shapes) & set(shift.shapes)
    base_words = _words(_scenes("train", 150)) | _words(_scenes("test", 60))
    shift_words = _words(_scenes("train", 150, SHIFT)) | _words(_scenes("test", 60, SHIFT))
    new = set(shift.colours) | set(shift.shapes)
    assert new <= shift_words, "every new word is used"
    assert not new & base_words, "the base benchmark never says a new word"
    assert not (set(base.colours) | set(base.shapes)) & shift_words
    for s in _scenes("val", 40, SHIFT):
        assert all(o.colour in shift.colours and o.shape in shift.shapes for o in s.objects)


@pytest.mark.parametrize("split", ("train", "val", "test", "compositional"))
def test_every_shift_expression_identifies_exactly_its_target(split):
    scenes = _scenes(split, 60, SHIFT)
    assert scenes
    held = set(SHIFT.held_out)
    for s in scenes:
        assert s.masks.any(axis=(1, 2)).all() and s.masks.sum(axis=0).max() <= 1
        for e in s.expressions:
            assert resolve(s.objects, e.text, SHIFT.margin) == [e.target], e.text
            assert ((s.objects[e.target].colour, s.objects[e.target].shape) in held) == (split == "compositional")


def test_shift_splits_and_scenes_are_their_own(tmp_path):
    root = write_benchmark(tmp_path / "shift", SHIFT, progress=False)
    digests = collections.defaultdict(set)
    for path in (root / "images").iterdir():
        digests[path.name.split("_")[0]].add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert set(digests) == set(SPLITS)
    for a in SPLITS:
        for b in SPLITS:
            assert a == b or not digests[a] & digests[b], (a, b)
    for split in ("train", "val", "test"):
        ds = synthetic_dataset(tmp_path, split, name="shift")
        assert len({e.text for e in ds.expressions}) > 1 and ds[0].mask.any()
    assert json.loads((root / "synthetic.json").read_text())["domain"] == "shift"
    categories = json.loads((root / "instances.json").read_text())["categories"]
    assert [c["name"] for c in categories] == list(DOMAINS["shift"].shapes)
    # not the base scenes with other words: the domain's seeds differ
    shift_layout = [generate_scene(SHIFT, "train", i) for i in range(20)]
    base_layout = [generate_scene(CFG, "train", i) for i in range(20)]
    places = lambda scene: [(o.x, o.y) for o in scene.objects]  # noqa: E731
    assert not any(a is not None and b is not None and places(a) == places(b)
                   for a, b in zip(shift_layout, base_layout))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="min_objects"):
        SyntheticConfig(min_objects=1)
    with pytest.raises(ValueError, match="unknown splits"):
        SyntheticConfig(scenes={"training": 3})
    with pytest.raises(ValueError, match="held-out pair"):
        SyntheticConfig(held_out=(("pink", "circle"),))
    with pytest.raises(ValueError, match="held-out pair"):
        DomainConfig(held_out=(("red", "heart"),))
    with pytest.raises(ValueError, match="unknown domain"):
        synthetic_config("mars")
    with pytest.raises(ValueError, match="base domain"):
        DomainConfig(domain="base")
    with pytest.raises(ValueError, match="compositional split needs"):
        DomainConfig(held_out=(), scenes={"compositional": 3})
    assert synthetic_config("base", seed=2) == SyntheticConfig(seed=2)


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


def test_command_line_writes_the_shift_domain(tmp_path):
    from training.synthetic.__main__ import main

    assert main(["--out", str(tmp_path / "s"), "--domain", "shift", "--train", "3", "--val", "2", "--test", "2",
                 "--image-size", "32"]) == 0
    written = json.loads((tmp_path / "s" / "synthetic.json").read_text())
    assert written["domain"] == "shift" and written["scenes"] == {"train": 3, "val": 2, "test": 2, "compositional": 0}
    texts = synthetic_dataset(tmp_path, "val", name="s").texts
    assert texts and all(set(t.split()) & (set(DOMAINS["shift"].colours) | set(DOMAINS["shift"].shapes) | {"shape"})
                         for t in texts)


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
