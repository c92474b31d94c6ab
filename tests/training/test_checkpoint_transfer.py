"""``sag-models import`` / ``export`` (training/registry.py, training/checkpoint_transfer.py): directories,
archives, broken checkpoints, unsafe archives, the hub when it cannot be reached, and the round trip."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from sag import SaG, tiny_config
from training.registry import Registry, RegistryError, main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[str, Path]:
    """A tiny model stored in a registry and exported as a plain save_pretrained directory: (version id, dir)."""
    root = tmp_path_factory.mktemp("source")
    torch.manual_seed(0)
    registry = Registry(root / "models")
    version = registry.add(SaG(tiny_config()), {"preset": "tiny", "note": "exported"})
    assert registry.export(version.id, root / "checkpoint") == [str(root / "checkpoint")]
    return version.id, root / "checkpoint"


def copy_of(exported_dir: Path, target: Path) -> Path:
    """A private copy of the exported checkpoint, free to break."""
    import shutil

    shutil.copytree(exported_dir, target)
    return target


def test_import_a_directory_validates_it_and_keeps_its_version_id(tmp_path, exported, capsys):
    version, directory = exported
    assert main(["--model-dir", str(tmp_path / "models"), "import", str(directory), "--promote", "--no-measure"]) == 0
    assert capsys.readouterr().out.strip() == version
    registry = Registry(tmp_path / "models")
    assert registry.current() == version
    stored = registry.get(version)
    assert stored.metadata["note"] == "exported" and stored.metadata["imported_from"] == "checkpoint"
    model = SaG.from_pretrained(stored.path)
    reference = SaG.from_pretrained(directory)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    # Importing the same weights again changes nothing; no staging leftovers are listed.
    assert registry.import_checkpoint(str(directory)) == (stored, False)
    assert [v.id for v in registry.versions()] == [version]


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_export_and_import_round_trip_through_an_archive(tmp_path, exported, suffix, capsys):
    version, directory = exported
    source = Registry(tmp_path / "a")
    source.import_checkpoint(str(directory))
    archive = tmp_path / f"model{suffix}"
    assert main(["--model-dir", str(tmp_path / "a"), "export", version, str(archive)]) == 0
    assert capsys.readouterr().out.strip() == str(archive)
    opener = zipfile.ZipFile(archive).namelist if suffix == ".zip" else tarfile.open(archive).getnames
    assert all(name.startswith(version) for name in opener())  # one top-level directory named after the version
    assert main(["--model-dir", str(tmp_path / "b"), "import", str(archive), "--no-measure"]) == 0
    assert capsys.readouterr().out.strip() == version
    imported = Registry(tmp_path / "b").get(version)
    assert imported.metadata["weights_sha256"] == source.get(version).metadata["weights_sha256"]
    assert imported.metadata["imported_from"] == archive.name  # a file name, never the local path


def test_optimizer_state_and_hidden_entries_are_not_imported(tmp_path, exported):
    # A sag-train checkpoint carries trainer_state.pt; a hub download a .cache/ folder.
    directory = copy_of(exported[1], tmp_path / "step-00000050")
    (directory / "trainer_state.pt").write_bytes(b"optimizer state")
    (directory / ".cache").mkdir()
    stored, new = Registry(tmp_path / "models").import_checkpoint(str(directory))
    assert new and not (stored.path / "trainer_state.pt").exists() and not (stored.path / ".cache").exists()
    assert (stored.path / "model.safetensors").is_file()


def test_export_refuses_to_overwrite(tmp_path, exported):
    version, directory = exported
    registry = Registry(tmp_path / "models")
    registry.import_checkpoint(str(directory))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("keep me")
    with pytest.raises(RegistryError, match="already exists"):
        registry.export(version, tmp_path / "busy")
    assert (tmp_path / "busy" / "file").read_text() == "keep me"
    with pytest.raises(RegistryError, match="unknown model version"):
        registry.export("20990101T000000Z-deadbeef", tmp_path / "new")


def _break(directory: Path, how: str) -> None:
    if how == "missing weights":
        (directory / "model.safetensors").unlink()
    elif how == "bad config JSON":
        (directory / "config.json").write_text('{"image_backbone": ')
    elif how == "config of another model":
        (directory / "config.json").write_text(json.dumps({"hidden_size": 768}))
    elif how == "newer format version":
        meta = json.loads((directory / "metadata.json").read_text())
        (directory / "metadata.json").write_text(json.dumps({**meta, "format_version": 99}))
    elif how == "no format version":
        meta = json.loads((directory / "metadata.json").read_text())
        del meta["format_version"]
        (directory / "metadata.json").write_text(json.dumps(meta))
    elif how == "altered weights":
        with open(directory / "model.safetensors", "r+b") as fh:
            fh.seek(-4, os.SEEK_END)
            fh.write(b"\x00\x01\x02\x03")
    elif how == "weights of another shape":
        meta = json.loads((directory / "metadata.json").read_text())
        config = json.loads((directory / "config.json").read_text())
        # A consistent-looking checkpoint (hash and version match) whose weights do not fit its config.
        torch.manual_seed(1)
        other = SaG(tiny_config(embed_dim=2 * config["embed_dim"]))
        (directory / "model.safetensors").unlink()
        other.save_pretrained(directory.with_name("other"))
        (directory.with_name("other") / "model.safetensors").rename(directory / "model.safetensors")
        other_meta = json.loads((directory.with_name("other") / "metadata.json").read_text())
        meta.update(version=other_meta["version"], weights_sha256=other_meta["weights_sha256"])
        (directory / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("how, message", [
    ("missing weights", "model.safetensors missing"),
    ("bad config JSON", "config.json is not valid JSON"),
    ("config of another model", "config.json is not a SaG config"),
    ("newer format version", "checkpoint format version 99 is not one this version"),
    ("no format version", "checkpoint format version None"),
    ("altered weights", "model.safetensors does not match metadata.json"),
    ("weights of another shape", "the checkpoint does not load"),
])
def test_a_broken_checkpoint_is_refused_with_the_reason(tmp_path, exported, how, message):
    directory = copy_of(exported[1], tmp_path / "broken")
    _break(directory, how)
    registry = Registry(tmp_path / "models")
    with pytest.raises(RegistryError, match=message):
        registry.import_checkpoint(str(directory))
    assert registry.versions() == [] and registry.current() is None
    assert [p.name for p in registry.root.iterdir()] == []  # no staging directory left behind


def test_the_cli_prints_the_reason_and_fails(tmp_path, exported, capsys):
    directory = copy_of(exported[1], tmp_path / "broken")
    _break(directory, "missing weights")
    assert main(["--model-dir", str(tmp_path / "models"), "import", str(directory)]) == 2
    assert "model.safetensors missing" in capsys.readouterr().err
    assert main(["--model-dir", str(tmp_path / "models"), "import", str(tmp_path / "nothing-here")]) == 2
    assert "no such file or directory, and not a Hugging Face hub repository id" in capsys.readouterr().err


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> None:
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)


@pytest.mark.parametrize("make, message", [
    ("dotdot", "unsafe member"),
    ("absolute", "no SaG checkpoint found"),  # the data filter unpacks "/x" as "x", inside the directory
    ("link out", "unsafe member"),
])
def test_archives_cannot_write_outside_their_directory(tmp_path, make, message):
    archive = tmp_path / "evil.tar.gz"
    if make == "dotdot":
        member = tarfile.TarInfo("../../escaped.txt")
        member.size = 5
        _tar_with(archive, member, b"owned")
    elif make == "absolute":
        member = tarfile.TarInfo(str(tmp_path / "escaped.txt"))
        member.size = 5
        _tar_with(archive, member, b"owned")
    else:
        member = tarfile.TarInfo("ckpt/config.json")
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
        _tar_with(archive, member)
    registry = Registry(tmp_path / "models")
    with pytest.raises(RegistryError, match=message):
        registry.import_checkpoint(str(archive))
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_a_python_without_tar_filters_refuses_tar_archives(tmp_path, exported, monkeypatch):
    """Before 3.10.12 / 3.11.4 tarfile has no data filter: nothing is unpacked unchecked."""
    archive = tmp_path / "ok.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(exported[1], arcname="ckpt")
    monkeypatch.delattr(tarfile, "data_filter")
    with pytest.raises(RegistryError, match="cannot unpack tar archives safely"):
        Registry(tmp_path / "models").import_checkpoint(str(archive))
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_zip_members_outside_the_directory_are_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escaped.txt", "owned")
    with pytest.raises(RegistryError, match="unsafe member '../escaped.txt'"):
        Registry(tmp_path / "models").import_checkpoint(str(archive))
    assert not (tmp_path / "escaped.txt").exists()


def test_an_archive_that_unpacks_too_large_is_refused_before_writing(tmp_path, exported, monkeypatch):
    import training.checkpoint_transfer as transfer

    version, directory = exported
    registry = Registry(tmp_path / "models")
    registry.import_checkpoint(str(directory))
    registry.export(version, tmp_path / "model.tar.gz")
    monkeypatch.setattr(transfer, "MAX_ARCHIVE_BYTES", 1000)  # the sizes are summed from the headers
    with pytest.raises(RegistryError, match="unpacks to .* MiB; the limit is 0 MiB"):
        Registry(tmp_path / "other").import_checkpoint(str(tmp_path / "model.tar.gz"))
    assert not any((tmp_path / "other").rglob("*.safetensors"))


def test_a_hub_id_with_the_hub_unreachable_fails_naming_the_repo(tmp_path, monkeypatch):
    from huggingface_hub import constants

    # Not offline, but nothing listens at the endpoint: a connection error, not a hang or a traceback.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(RegistryError, match=r"cannot download 'someone/sag-model': the Hugging Face hub cannot be "
                                            r"reached \("):
        Registry(tmp_path / "models").import_checkpoint("someone/sag-model")


def test_hub_import_and_push_offline_fail_clearly_from_the_cli(tmp_path, exported):
    """The real command with HF_HUB_OFFLINE=1, as scripts/run-backend.sh and scripts/test.sh run."""
    version, directory = exported
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SAG_MODEL_DIR": str(tmp_path / "models")}
    command = [sys.executable, "-m", "training.registry"]
    pulled = subprocess.run([*command, "import", "someone/sag-model"], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert pulled.returncode == 2
    assert ("cannot download 'someone/sag-model': the Hugging Face hub cannot be reached because HF_HUB_OFFLINE "
            "is set") in pulled.stderr
    assert "Traceback" not in pulled.stderr
    Registry(tmp_path / "models").import_checkpoint(str(directory))
    pushed = subprocess.run([*command, "export", version, "--push-to-hub", "someone/sag-model"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert pushed.returncode == 2
    assert "cannot push to 'someone/sag-model': the Hugging Face hub cannot be reached because HF_HUB_OFFLINE" \
        in pushed.stderr
