"""A version's measured figures (training/figures.py): recorded in its metadata, shown by ``sag-models list``, and
measured on real photos by ``sag-models import`` (training/registry.py), or "not measured: <why>" when the real-photo
data cannot be built. The real-photo benchmark here is the tiny one of conftest.py (three texts, one photo)."""

from __future__ import annotations

import json

import pytest
import torch

from sag import SaG, tiny_config
from sag.checkpoint import WEIGHTS
from training import real_photos
from training.exceptions import RegistryError
from training.figures import NOT_MEASURED, REAL_PHOTOS, SYNTHETIC, figures, make_figure
from training.registry import Registry, main


def _model(seed: int) -> SaG:
    torch.manual_seed(seed)
    return SaG(tiny_config(image_size=32))


def _exported(tmp_path, seed: int):
    """A tiny model saved as a plain save_pretrained directory (something to import): (version id, directory)."""
    info = _model(seed).save_pretrained(tmp_path / f"checkpoint-{seed}")
    return info.version, info.path


def test_a_recorded_figure_is_read_back_and_leaves_the_version_alone(tmp_path):
    registry = Registry(tmp_path / "models")
    version = registry.add(_model(0), {"note": "kept"})
    weights = (version.path / WEIGHTS).read_bytes()
    assert figures(version.metadata) == {SYNTHETIC: NOT_MEASURED, REAL_PHOTOS: NOT_MEASURED}
    figure = make_figure({"mIoU": 0.25, "cIoU": 0.3, "acc@0.5": 0.5, "count": 4}, 4, "data-sha", "served")
    stored = registry.record_figure(version.id, REAL_PHOTOS, figure)
    assert figures(stored.metadata) == {SYNTHETIC: NOT_MEASURED, REAL_PHOTOS: figure}
    assert stored.metadata["note"] == "kept" and stored.id == version.id
    assert [v.id for v in registry.versions()] == [version.id]
    assert (version.path / WEIGHTS).read_bytes() == weights
    # A later measurement of the same benchmark replaces the earlier one; the other benchmark stays.
    registry.record_figure(version.id, SYNTHETIC, make_figure({"mIoU": 0.6, "acc@0.5": 0.7}, 10, "syn", "ours"))
    again = make_figure({"mIoU": 0.1, "acc@0.5": 0.0}, 4, "data-sha", "served")
    shown = figures(registry.record_figure(version.id, REAL_PHOTOS, again).metadata)
    assert shown[REAL_PHOTOS]["mIoU"] == 0.1 and shown[SYNTHETIC]["mIoU"] == 0.6
    # The weights are untouched: the version still validates and exports with its figures.
    registry.export(version.id, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "metadata.json").read_text())["measured"][SYNTHETIC]["texts"] == 10
    assert Registry(tmp_path / "other").import_checkpoint(str(tmp_path / "out"))[0].id == version.id


def test_a_figure_without_its_numbers_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mIoU"):
        make_figure({"acc@0.5": 0.5}, 3, "d", "served")
    with pytest.raises(RegistryError, match="unknown model version"):
        Registry(tmp_path).record_figure("20240101T000000Z-deadbeef", SYNTHETIC, {})


def test_list_shows_each_versions_figures(tmp_path, capsys):
    registry = Registry(tmp_path)
    measured = registry.add(_model(0)).id
    unmeasured = registry.add(_model(1)).id
    registry.promote(measured)
    registry.record_figure(measured, REAL_PHOTOS, make_figure({"mIoU": 0.25, "acc@0.5": 0.5}, 4, "d", "served"))
    assert main(["--model-dir", str(tmp_path), "--redis-url", "", "list"]) == 0
    lines = {line.split()[1] if line.startswith("*") else line.split()[0]: line
             for line in capsys.readouterr().out.splitlines()}
    assert lines[measured].startswith(f"* {measured}  synthetic: not measured")
    assert "real photos: mIoU 0.250, acc@0.5 0.50 (4 texts)" in lines[measured]
    assert "synthetic: not measured" in lines[unmeasured] and "real photos: not measured" in lines[unmeasured]


def test_measure_scores_the_served_inference(tmp_path, tiny_real_photos):
    texts, cache = tiny_real_photos
    cases, fingerprint = real_photos.load_benchmark(texts, cache, download=False)
    model = _model(0)
    figure = real_photos.measure(model, cases, fingerprint)
    results, _ = real_photos.evaluate_model(model, cases, model.config.threshold)
    served = results[real_photos.SERVED]["per_text"]
    assert figure["texts"] == 3 and figure["photos"] == 1 and figure["inference"] == "served"
    assert figure["mIoU"] == pytest.approx(sum(r["iou"] for r in served) / 3, abs=1e-4)
    assert figure["acc@0.5"] == pytest.approx(sum(r["hit@0.5"] for r in served) / 3, abs=1e-4)
    assert fingerprint == real_photos.data_fingerprint(texts) and len(fingerprint) == 64


def test_import_prints_both_real_photo_figures_and_records_them(tmp_path, tiny_real_photos, capsys, monkeypatch):
    texts, cache = tiny_real_photos
    monkeypatch.setattr(real_photos, "DATA_FILE", texts)
    models = tmp_path / "models"
    first, first_dir = _exported(tmp_path, 0)
    second, second_dir = _exported(tmp_path, 1)
    cli = ["--model-dir", str(models), "--redis-url", ""]

    # Nothing served yet: only the imported version is measured.
    assert main([*cli, "import", str(first_dir), "--promote", "--photos-cache", str(cache)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == first  # stdout stays the version id alone, for scripts
    assert "real photos (served inference):" in err
    assert "serving  none: the registry served nothing before this import" in err
    recorded = Registry(models).get(first).metadata["measured"][REAL_PHOTOS]
    assert recorded["texts"] == 3 and f"{first}  mIoU {recorded['mIoU']:.3f}" in err and "measured now" in err

    # The serving version's figure on the same data is reused, not measured again.
    assert main([*cli, "import", str(second_dir), "--photos-cache", str(cache)]) == 0
    err = capsys.readouterr().err
    imported_line = next(line for line in err.splitlines() if "imported" in line)
    serving_line = next(line for line in err.splitlines() if "serving" in line)
    assert second in imported_line and "measured now" in imported_line
    assert first in serving_line and f"recorded {recorded['measured_at']}, same data" in serving_line
    assert Registry(models).get(first).metadata["measured"][REAL_PHOTOS] == recorded
    assert Registry(models).get(second).metadata["measured"][REAL_PHOTOS]["texts"] == 3
    assert Registry(models).current() == first  # not promoted


def test_import_says_not_measured_and_why_when_the_photos_cannot_be_fetched(tmp_path, tiny_real_photos, capsys,
                                                                          monkeypatch):
    """Offline (pip finds no index) with an empty photo cache: the import succeeds, the figures say why not."""
    texts, _ = tiny_real_photos
    monkeypatch.setattr(real_photos, "DATA_FILE", texts)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    version, directory = _exported(tmp_path, 0)
    assert main(["--model-dir", str(tmp_path / "models"), "--redis-url", "", "import", str(directory),
                 "--photos-cache", str(tmp_path / "empty-cache")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == version
    assert (f"imported {version}  not measured: the real-photo data cannot be built: could not fetch "
            "sag-assist-test-archive-that-does-not-exist==1.0") in err
    assert "Traceback" not in err
    assert "measured" not in Registry(tmp_path / "models").get(version).metadata


def test_import_with_no_measure_skips_the_figures(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(real_photos, "load_benchmark", lambda *a, **k: pytest.fail("measured despite --no-measure"))
    version, directory = _exported(tmp_path, 0)
    assert main(["--model-dir", str(tmp_path / "models"), "--redis-url", "", "import", str(directory),
                 "--no-measure"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == version and "real photos" not in err
