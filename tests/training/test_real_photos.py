"""training/real_photos.py, the real-photo benchmark's data and scores: its texts file names instances that exist,
its readers build the masks the annotations mean (labelme's drawing order, groups, ignored pixels), and
:func:`~training.real_photos.measure` gives the figure a version keeps."""

import json

import numpy as np
import pytest

from sag.spatial import parse
from training import real_photos


def test_the_texts_file_is_consistent():
    data = real_photos.load_texts()
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
    assert kinds == set(real_photos.KINDS)


def test_a_text_naming_a_missing_instance_is_refused(tmp_path):
    data = json.loads(real_photos.DATA_FILE.read_text())
    data["photos"][0]["texts"][0]["targets"] = [99]
    bad = tmp_path / "texts.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(real_photos.BenchmarkDataError, match="targets"):
        real_photos.load_texts(bad)


def test_labelme_annotations_become_instances(labelme_archive):
    entry = {"id": "fake", "format": "labelme-json", "member": "fake-1.0/ex/a.json", "size": [20, 30],
             "instances": [{"id": 0, "label": "person"}, {"id": 1, "label": "bottle"},
                           {"id": 2, "label": "person"}]}
    photo = real_photos.load_photo(entry, real_photos.Archive(labelme_archive))
    first, bottle, second = photo.instances
    assert first[15, 2] and first[2, 2]  # both polygons of group 0 are one instance
    assert bottle[5, 5] and not first[5, 5]  # drawn later, the bottle takes its pixels from the person
    assert second[15, 25] and not second[2, 25]
    assert photo.ignore[2, 25] and not photo.ignore[15, 25]
    entry["instances"][1]["label"] = "cup"
    with pytest.raises(real_photos.BenchmarkDataError, match="instances"):
        real_photos.load_photo(entry, real_photos.Archive(labelme_archive))


def test_scores_leave_ignored_pixels_out():
    ignore = np.zeros((4, 4), bool)
    ignore[:, 3] = True
    truth = np.zeros((4, 4), bool)
    truth[:, :2] = True
    photo = real_photos.Photo("p", np.zeros((4, 4, 3), np.uint8), [truth], ["x"], ignore)
    case = real_photos.Case(photo, "x", "noun", [0], truth)
    pred = truth.copy()
    pred[:, 3] = True  # only on ignored pixels: not a mistake
    record = real_photos.score_case(case, pred)
    assert record["iou"] == 1.0 and record["hit@0.5"]


@pytest.mark.skipif(not all((real_photos.DEFAULT_CACHE / spec["file"]).exists()
                            for spec in json.loads(real_photos.DATA_FILE.read_text())["archives"].values()),
                    reason="the photo archives are not in the default cache (python bench/real_photos.py fetches them)")
def test_every_target_instance_exists_in_the_archives():
    data = real_photos.load_texts()
    cases = real_photos.load_cases(data, real_photos.fetch_archives(data, real_photos.DEFAULT_CACHE, download=False))
    assert len(cases) == sum(len(p["texts"]) for p in data["photos"])
    for case in cases:
        assert case.truth.any(), case.text
