"""Each real-data format, built as a small fixture here (nothing is downloaded)."""

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from training.datasets import DatasetError, open_dataset
from training.datasets.jsonl import jsonl_dataset
from training.datasets.label_studio import label_studio_dataset, label_studio_expressions
from training.datasets.phrasecut import phrasecut_dataset
from training.datasets.refcoco import refer_dataset


def _square_polygon(x0, y0, x1, y1):
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


@pytest.fixture
def refcoco_root(tmp_path, write_image):
    """A refer-layout RefCOCO with two COCO images, three refs over train / val / testA, polygon and RLE masks."""
    from pycocotools import mask as mask_utils

    write_image("coco/COCO_train2014_000000000001.jpg", (40, 60))
    write_image("coco/COCO_train2014_000000000002.jpg", (50, 30))
    rle_mask = np.zeros((50, 30), np.uint8)
    rle_mask[10:20, 5:15] = 1
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    rle["counts"] = rle["counts"].decode()
    instances = {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 40, "width": 60},
                   {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": 50, "width": 30}],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 1, "segmentation": [_square_polygon(10, 5, 30, 25)]},
            {"id": 12, "image_id": 1, "category_id": 1, "segmentation": [_square_polygon(40, 0, 59, 10)]},
            {"id": 21, "image_id": 2, "category_id": 2, "segmentation": rle},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}],
    }
    refs = [
        {"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "train", "category_id": 1,
         "sentences": [{"sent_id": 1, "sent": "man on the left"}, {"sent_id": 2, "sent": "left guy"}]},
        {"ref_id": 2, "ann_id": 12, "image_id": 1, "split": "val", "category_id": 1,
         "sentences": [{"sent_id": 3, "sent": "top right person"}]},
        {"ref_id": 3, "ann_id": 21, "image_id": 2, "split": "testA", "category_id": 2,
         "sentences": [{"sent_id": 4, "sent": "the dog"}]},
    ]
    d = tmp_path / "refer" / "refcoco"
    d.mkdir(parents=True)
    (d / "instances.json").write_text(json.dumps(instances))
    with open(d / "refs(unc).p", "wb") as fh:
        pickle.dump(refs, fh)
    return tmp_path


def test_refcoco_splits_texts_and_masks(refcoco_root):
    train = refer_dataset(refcoco_root / "refer", "refcoco", "train", image_dir=refcoco_root / "coco")
    assert train.texts == ["man on the left", "left guy"]  # one expression per sentence
    sample = train[1]
    assert sample.image.size == (60, 40)
    expected = np.zeros((40, 60), bool)
    expected[5:25, 10:30] = True  # pycocotools fills [x0, x1) x [y0, y1) for an axis-aligned polygon
    assert np.array_equal(sample.mask, expected)
    val = refer_dataset(refcoco_root / "refer", "refcoco", "val", image_dir=refcoco_root / "coco")
    assert val.texts == ["top right person"] and val[0].mask[:10, 40:59].all() and val[0].mask.sum() == 10 * 19
    test_a = refer_dataset(refcoco_root / "refer", "refcoco", "testA", image_dir=refcoco_root / "coco")
    assert test_a[0].mask.sum() == 100 and test_a[0].mask[10:20, 5:15].all()


def test_training_view_never_decodes_masks(refcoco_root):
    pairs = refer_dataset(refcoco_root / "refer", "refcoco", "train", image_dir=refcoco_root / "coco",
                          with_masks=False)
    assert all(e.mask is None for e in pairs.expressions)
    assert pairs[0].mask is None and pairs[0].text == "man on the left"


def test_refcoco_errors_name_the_problem(refcoco_root, tmp_path):
    with pytest.raises(DatasetError, match="no split 'testB'"):
        refer_dataset(refcoco_root / "refer", "refcoco", "testB")
    with pytest.raises(DatasetError, match=r"refs\(umd\).p"):
        refer_dataset(refcoco_root / "refer", "refcoco", "val", split_by="umd")
    with pytest.raises(DatasetError, match="image not found"):
        refer_dataset(refcoco_root / "refer", "refcoco", "val", image_dir=tmp_path / "nowhere")[0]
    broken = refcoco_root / "refer" / "refcoco" / "refs(google).p"
    broken.write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="not a readable refs pickle"):
        refer_dataset(refcoco_root / "refer", "refcoco", "val", split_by="google")


def test_phrasecut(tmp_path, write_image):
    write_image("pc/images/7.jpg", (30, 40))
    tasks = [{"task_id": "7__1", "image_id": 7, "phrase": "black cat",
              "Polygons": [[[[2, 2], [12, 2], [12, 12], [2, 12]]], [[[20, 20], [30, 20], [30, 28]]]]}]
    (tmp_path / "pc" / "refer_val.json").write_text(json.dumps(tasks))
    ds = phrasecut_dataset(tmp_path / "pc", "val")
    sample = ds[0]
    assert sample.text == "black cat" and sample.mask.shape == (30, 40)
    assert sample.mask[2:13, 2:13].all() and sample.mask[21, 28] and not sample.mask[0, 0]
    assert sample.mask.sum() > 121, "both instances are in the mask"
    (tmp_path / "pc" / "refer_test.json").write_text(json.dumps([{"image_id": 7, "phrase": "x"}]))
    with pytest.raises(DatasetError, match="lacks \\['Polygons'\\]"):
        phrasecut_dataset(tmp_path / "pc", "test")


def _brush(mask):
    from label_studio_converter.brush import mask2rle

    return mask2rle(np.where(mask, 255, 0).astype(np.uint8))


def test_label_studio_export(tmp_path, write_image):
    pytest.importorskip("label_studio_converter")
    write_image("media/upload/1/a.png", (20, 30))
    mask = np.zeros((20, 30), bool)
    mask[3:9, 4:20] = True
    tasks = [
        {"id": 1, "data": {"image": "/data/upload/1/a.png", "caption": "the red car"},
         "annotations": [{"id": 5, "result": [
             {"type": "brushlabels", "from_name": "mask", "to_name": "image", "original_width": 30,
              "original_height": 20, "value": {"format": "rle", "rle": _brush(mask), "brushlabels": ["obj"]}},
             {"type": "textarea", "from_name": "prompt", "to_name": "image", "value": {"text": ["red car"]}},
         ]}]},
        {"id": 2, "data": {"image": "/data/upload/1/a.png", "caption": "a tree"}, "annotations": []},
        {"id": 3, "data": {"image": "/data/upload/1/a.png", "caption": "cancelled"},
         "annotations": [{"id": 6, "was_cancelled": True, "result": []}]},
    ]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    exprs = label_studio_expressions(export, text_fields=("caption", "prompt"), image_root=tmp_path / "media")
    assert [(e.image_id, e.text, e.mask is not None) for e in exprs] == [
        ("1", "the red car", True), ("1", "red car", True), ("2", "a tree", False), ("3", "cancelled", False)]
    evalset = label_studio_dataset(export, text_fields=("caption", "prompt"), image_root=tmp_path / "media")
    assert len(evalset) == 2
    assert np.array_equal(evalset[0].mask, mask) and evalset[0].image.size == (30, 20)
    pairs = label_studio_dataset(tasks, text_fields=("caption",), image_root=tmp_path / "media", with_masks=False)
    assert pairs.texts == ["the red car", "a tree", "cancelled"] and pairs[0].mask is None


def test_label_studio_errors(tmp_path):
    with pytest.raises(DatasetError, match="no image in data\\['image'\\]"):
        label_studio_expressions([{"id": 4, "data": {"picture": "x.png"}}])
    bad = [{"id": 9, "data": {"image": "x.png", "text": "t"}, "annotations": [{"result": [
        {"type": "brushlabels", "value": {"format": "rle", "rle": [1, 2]}}]}]}]
    with pytest.raises(DatasetError, match="task 9.*original_height"):
        label_studio_expressions(bad)
    (tmp_path / "e.json").write_text("{oops")
    with pytest.raises(DatasetError, match="not valid JSON"):
        label_studio_expressions(tmp_path / "e.json")


def test_jsonl(tmp_path, write_image):
    write_image("j/a.png", (16, 16))
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 255
    Image.fromarray(mask).save(tmp_path / "j" / "a_mask.png")
    lines = [{"image": "a.png", "text": "the square", "mask": "a_mask.png", "split": "val"},
             {"image": "a.png", "text": "just a caption", "split": "train"}]
    path = tmp_path / "j" / "data.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    evalset = jsonl_dataset(path)
    assert evalset.texts == ["the square"] and evalset[0].mask.sum() == 16
    assert jsonl_dataset(path, split="train", with_masks=False).texts == ["just a caption"]
    assert open_dataset("jsonl", path, None, with_masks=False).texts == ["the square", "just a caption"]
    path.write_text('{"image": "a.png", "text": "ok"}\n{"image": "a.png"}\n')
    with pytest.raises(DatasetError, match="data.jsonl:2 has no non-empty 'text'"):
        jsonl_dataset(path)


def test_missing_mask_file_is_reported(tmp_path, write_image):
    write_image("a.png", (8, 8))
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"image": "a.png", "text": "t", "mask": "gone.png"}) + "\n")
    with pytest.raises(DatasetError, match="mask file not found"):
        jsonl_dataset(path)[0]


def test_open_dataset_accepts_the_refer_directory_itself(synthetic_root):
    a = open_dataset("synthetic", synthetic_root, "val", True)
    b = open_dataset("synthetic", synthetic_root / "synthetic", "val", True)
    assert a.texts == b.texts and len(a) > 0
    with pytest.raises(DatasetError, match="unknown data set format"):
        open_dataset("coco", synthetic_root, "val", True)


def test_load_image_applies_exif_orientation(tmp_path):
    # A 40x20 (W x H) photo tagged "rotate 90 CW" is shown, and masked in Label Studio, as 20x40.
    from PIL import Image

    from training.datasets.base import load_image

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (200, 10, 10)).save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(str(tmp_path / "rotated.jpg")).size == (20, 40)
