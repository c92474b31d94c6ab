"""bench/real_photos.py: its texts file names instances that exist, and its readers build the masks the annotations
mean (labelme's drawing order, groups, ignored pixels)."""

import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sag.spatial import parse

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    if "real_photos" not in sys.modules:
        spec = importlib.util.spec_from_file_location("real_photos", ROOT / "bench" / "real_photos.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["real_photos"] = module
        spec.loader.exec_module(module)
    return sys.modules["real_photos"]


def test_the_texts_file_is_consistent():
    bench = _bench()
    data = bench.load_texts()
    kinds = set()
    for photo in data["photos"]:
        labels = [inst["label"] for inst in photo["instances"]]
        for text in photo["texts"]:
            kinds.add(text["kind"])
            targets = set(text["targets"])
            if text["kind"] == "noun":
                # a category noun names every instance of its category: the union of all of them
                named = {labels[i] for i in targets}
                assert targets == {i for i, label in enumerate(labels) if label in named}, text
                assert parse(text["text"]) is None, text
            else:
                assert len(targets) == 1, text
            if text["kind"] == "spatial":
                query = parse(text["text"])
                assert query is not None and (query.position or query.size), text
        assert len({t["text"] for t in photo["texts"]}) == len(photo["texts"]), f"{photo['id']}: a text repeats"
    assert kinds == set(bench.KINDS)


def test_a_text_naming_a_missing_instance_is_refused(tmp_path):
    bench = _bench()
    data = json.loads(bench.DATA_FILE.read_text())
    data["photos"][0]["texts"][0]["targets"] = [99]
    bad = tmp_path / "texts.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(bench.DataError, match="targets"):
        bench.load_texts(bad)


def _labelme_archive(tmp_path: Path) -> Path:
    """A tiny sdist holding one labelme annotation: a person drawn in two polygons (one group), a bottle drawn over
    it, an ignored region, and a second person."""
    shapes = [
        {"label": "person", "group_id": 0, "shape_type": "polygon", "points": [[0, 0], [9, 0], [9, 9], [0, 9]]},
        {"label": "person", "group_id": 0, "shape_type": "polygon", "points": [[0, 12], [5, 12], [5, 19], [0, 19]]},
        {"label": "bottle", "group_id": None, "shape_type": "polygon", "points": [[4, 4], [7, 4], [7, 7], [4, 7]]},
        {"label": "__ignore__", "group_id": None, "shape_type": "polygon",
         "points": [[20, 0], [29, 0], [29, 5], [20, 5]]},
        {"label": "person", "group_id": None, "shape_type": "polygon",
         "points": [[20, 10], [29, 10], [29, 19], [20, 19]]},
    ]
    ann = json.dumps({"shapes": shapes, "imageHeight": 20, "imageWidth": 30}).encode()
    jpg = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(jpg, format="JPEG")
    path = tmp_path / "fake-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in (("fake-1.0/ex/a.json", ann), ("fake-1.0/ex/a.jpg", jpg.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_labelme_annotations_become_instances(tmp_path):
    bench = _bench()
    entry = {"id": "fake", "format": "labelme-json", "member": "fake-1.0/ex/a.json", "size": [20, 30],
             "instances": [{"id": 0, "label": "person"}, {"id": 1, "label": "bottle"},
                           {"id": 2, "label": "person"}]}
    photo = bench.load_photo(entry, bench.Archive(_labelme_archive(tmp_path)))
    first, bottle, second = photo.instances
    assert first[15, 2] and first[2, 2]  # both polygons of group 0 are one instance
    assert bottle[5, 5] and not first[5, 5]  # drawn later, the bottle takes its pixels from the person
    assert second[15, 25] and not second[2, 25]
    assert photo.ignore[2, 25] and not photo.ignore[15, 25]
    entry["instances"][1]["label"] = "cup"
    with pytest.raises(bench.DataError, match="instances"):
        bench.load_photo(entry, bench.Archive(_labelme_archive(tmp_path)))


def test_scores_leave_ignored_pixels_out():
    bench = _bench()
    ignore = np.zeros((4, 4), bool)
    ignore[:, 3] = True
    truth = np.zeros((4, 4), bool)
    truth[:, :2] = True
    photo = bench.Photo("p", np.zeros((4, 4, 3), np.uint8), [truth], ["x"], ignore)
    case = bench.Case(photo, "x", "noun", [0], truth)
    pred = truth.copy()
    pred[:, 3] = True  # only on ignored pixels: not a mistake
    record = bench.score_case(case, pred)
    assert record["iou"] == 1.0 and record["hit@0.5"]


@pytest.mark.skipif(not all((_bench().DEFAULT_CACHE / spec["file"]).exists()
                            for spec in json.loads(_bench().DATA_FILE.read_text())["archives"].values()),
                    reason="the photo archives are not in the default cache (python bench/real_photos.py fetches them)")
def test_every_target_instance_exists_in_the_archives():
    bench = _bench()
    data = bench.load_texts()
    cases = bench.load_cases(data, bench.fetch_archives(data, bench.DEFAULT_CACHE, download=False))
    assert len(cases) == sum(len(p["texts"]) for p in data["photos"])
    for case in cases:
        assert case.truth.any(), case.text
