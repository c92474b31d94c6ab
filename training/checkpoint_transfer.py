"""Moving SaG checkpoints in and out of the registry: where an import comes from (a ``save_pretrained`` directory,
a ``.tar.gz`` / ``.zip`` archive of one, or a Hugging Face hub repository), what makes a checkpoint acceptable, and
where an export goes (a directory, an archive, a hub repository).

:class:`training.registry.Registry` uses these for ``sag-models import`` and ``sag-models export``; nothing here
touches the registry itself.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from sag import SaG, SaGConfig
from sag.checkpoint import CONFIG, FORMAT_VERSION, METADATA, WEIGHTS, file_sha256

from .checkpoints import TRAINER_STATE
from .exceptions import CheckpointError

# What save_pretrained names a version: "<UTC timestamp>-<first 8 hex digits of the weights' sha256>".
VERSION_ID = re.compile(r"\d{8}T\d{6}Z-([0-9a-f]{8})")
# owner/name as the hub spells repository ids.
HUB_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# Left out of an imported version: a training run's optimizer state (sag-train checkpoints carry it; serving does
# not need it and it doubles the size) and hidden entries (the hub client's .cache/, .git, editor files).
SKIPPED = (TRAINER_STATE,)
MAX_ARCHIVE_BYTES = 32 * 2**30  # an archive that unpacks to more than this is refused before anything is written


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{what} is not valid JSON: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{what} cannot be read: {exc}") from None


def validate_checkpoint(directory: Path, load: bool = True) -> dict[str, Any]:
    """Check that ``directory`` is a complete SaG checkpoint this code can serve and return its metadata.

    Checked, each with its own message: the three files of ``save_pretrained`` are there; ``metadata.json`` and
    ``config.json`` are JSON objects; the format version is one this code reads (1..``FORMAT_VERSION``); the config
    is a :class:`~sag.SaGConfig`; the weights' sha256 is the one in the metadata and in the version id (a truncated
    or altered file fails here); and, with ``load``, :meth:`SaG.from_pretrained` builds the model on the CPU
    (weights matching the config, the text backbone's files present)."""
    missing = [name for name in (WEIGHTS, CONFIG, METADATA) if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"not a complete SaG checkpoint: {', '.join(missing)} missing (a save_pretrained "
                              f"directory holds {WEIGHTS}, {CONFIG} and {METADATA})")
    metadata = _read_json(directory / METADATA, METADATA)
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{METADATA} must be a JSON object")
    fmt = metadata.get("format_version")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or not 1 <= fmt <= FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format version {fmt!r} is not one this version of SaG Assist reads "
                              f"(1 to {FORMAT_VERSION}); upgrade it to import this checkpoint")
    config = _read_json(directory / CONFIG, CONFIG)
    if not isinstance(config, dict):
        raise CheckpointError(f"{CONFIG} must be a JSON object")
    try:
        SaGConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{CONFIG} is not a SaG config: {exc}") from None
    version = metadata.get("version")
    match = VERSION_ID.fullmatch(version) if isinstance(version, str) else None
    if match is None:
        raise CheckpointError(f"{METADATA} has no valid version id (got {version!r}; expected "
                              "<YYYYMMDDTHHMMSSZ>-<8 hex digits>, as save_pretrained writes)")
    sha = file_sha256(directory / WEIGHTS)
    if metadata.get("weights_sha256", sha) != sha or match.group(1) != sha[:8]:
        raise CheckpointError(f"{WEIGHTS} does not match {METADATA} (sha256 {sha[:8]}..., version {version}): the "
                              "file is truncated or was changed after saving")
    if load:
        try:
            SaG.from_pretrained(directory, device="cpu")
        except Exception as exc:  # any failure to build the model means the checkpoint cannot be served
            raise CheckpointError(f"the checkpoint does not load: {type(exc).__name__}: {exc}") from None
    return metadata


def checkpoint_root(directory: Path) -> Path:
    """``directory`` when it holds a checkpoint's files, else its single visible sub-directory (an archive of a
    directory unpacks to one)."""
    if any((directory / name).exists() for name in (WEIGHTS, CONFIG, METADATA)):
        return directory
    children = [p for p in directory.iterdir() if not p.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir():
        return checkpoint_root(children[0])
    raise CheckpointError(f"no SaG checkpoint found: expected {WEIGHTS}, {CONFIG} and {METADATA} at the top or in a "
                          f"single top-level directory (found: {sorted(p.name for p in children)[:10]})")


def copy_checkpoint(source: Path, target: Path) -> None:
    """Copy the checkpoint files of ``source`` into the new directory ``target`` (symlinks followed: a hub download
    or an archive's links become plain files), leaving out hidden entries and :data:`SKIPPED` files."""
    def ignore(directory: str, names: list[str]) -> list[str]:
        top = Path(directory) == source
        return [n for n in names if n.startswith(".") or (top and n in SKIPPED)]

    shutil.copytree(source, target, symlinks=False, ignore=ignore)


# ---- sources --------------------------------------------------------------------------------------------------------
def is_archive(path: str | Path) -> bool:
    """True for the archive names ``sag-models`` reads and writes (.tar.gz, .tgz, .tar, .zip)."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def fetch_source(source: str, workdir: Path, revision: str | None = None) -> tuple[Path, str]:
    """The checkpoint directory for ``source`` (unpacked or downloaded under ``workdir`` when needed) and a short
    description of where it came from, for the version's metadata (a hub id, or a file name: no local paths)."""
    path = Path(source).expanduser()
    if path.exists():
        if revision:
            raise CheckpointError("--revision applies to hub repositories, not to local files")
        if path.is_dir():
            return checkpoint_root(path), path.resolve().name
        if is_archive(path):
            unpacked = workdir / "unpacked"
            unpacked.mkdir()
            unpack_archive(path, unpacked)
            return checkpoint_root(unpacked), path.name
        raise CheckpointError(f"{source} is neither a directory nor an archive ({', '.join(ARCHIVE_SUFFIXES)})")
    if HUB_REPO_ID.fullmatch(source) and not source.startswith((".", "/", "~")):
        return download_from_hub(source, workdir / "hub", revision), f"hf:{source}" + (f"@{revision}" if revision
                                                                                         else "")
    raise CheckpointError(f"{source}: no such file or directory, and not a Hugging Face hub repository id "
                          "(owner/name)")


def unpack_archive(archive: Path, target: Path) -> None:
    """Unpack a .tar(.gz) or .zip into ``target``, refusing any member that would land outside it (absolute paths,
    ``..``, links pointing out, device files) and archives that unpack to more than :data:`MAX_ARCHIVE_BYTES`."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = zf.infolist()
                for info in members:
                    parts = PurePosixPath(info.filename.replace("\\", "/")).parts
                    if info.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                        raise CheckpointError(f"{archive.name}: unsafe member {info.filename!r} (it would be "
                                              "written outside the target directory)")
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise CheckpointError(f"{archive.name}: member {info.filename!r} is a symbolic link")
                _check_size(archive, sum(info.file_size for info in members))
                zf.extractall(target)
            return
        if not hasattr(tarfile, "data_filter"):
            # PEP 706's filters came in Python 3.10.12 / 3.11.4; without them extractall would trust every name
            # and link in the archive, so refuse rather than unpack unchecked.
            raise CheckpointError(f"{archive.name}: this Python ({sys.version.split()[0]}) cannot unpack tar "
                                  "archives safely (it needs 3.10.12 / 3.11.4 or later); upgrade Python, or pass "
                                  "a .zip or an unpacked directory")
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            _check_size(archive, sum(m.size for m in members if m.isfile()))
            # The "data" filter (PEP 706) refuses absolute names, "..", links that leave the target, device files,
            # and drops set-uid bits.
            tar.extractall(target, filter="data")
    except CheckpointError:
        raise
    except tarfile.FilterError as exc:
        raise CheckpointError(f"{archive.name}: unsafe member: {exc}") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise CheckpointError(f"{archive.name} cannot be unpacked: {exc}") from None


def _check_size(archive: Path, size: int) -> None:
    if size > MAX_ARCHIVE_BYTES:
        raise CheckpointError(f"{archive.name} unpacks to {size / 2**20:.1f} MiB; the limit is "
                              f"{MAX_ARCHIVE_BYTES / 2**20:.0f} MiB")


def _hub_failure(repo_id: str, action: str, exc: Exception) -> CheckpointError:
    """A message for a failed hub call: offline mode, an unreachable hub, an unknown repository, no permission."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    chain = [exc, exc.__cause__, exc.__context__]
    if constants.HF_HUB_OFFLINE or any(isinstance(e, OfflineModeIsEnabled) for e in chain):
        return CheckpointError(f"cannot {action} {repo_id!r}: the Hugging Face hub cannot be reached because "
                               "HF_HUB_OFFLINE is set (scripts/run-backend.sh and scripts/test.sh set it); run with "
                               "HF_HUB_OFFLINE=0, or use a local directory or archive")
    if isinstance(exc, RevisionNotFoundError):
        return CheckpointError(f"cannot {action} {repo_id!r}: no such revision on the Hugging Face hub")
    if isinstance(exc, (RepositoryNotFoundError, GatedRepoError)) or (
            isinstance(exc, HfHubHTTPError) and getattr(exc.response, "status_code", None) in (401, 403)):
        return CheckpointError(f"cannot {action} {repo_id!r}: the Hugging Face hub refused (no such repository, or "
                               "it is private or gated: log in with `hf auth login` or set HF_TOKEN)")
    return CheckpointError(f"cannot {action} {repo_id!r}: the Hugging Face hub cannot be reached "
                           f"({type(exc).__name__}: {exc}); check the network, a proxy or HF_ENDPOINT, or use a "
                           "local directory or archive")


def download_from_hub(repo_id: str, target: Path, revision: str | None = None) -> Path:
    """Download a hub repository holding a ``save_pretrained`` directory into ``target`` (plain files, no links
    into the hub cache) and return its checkpoint root."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, revision=revision, local_dir=target))
    except Exception as exc:  # the hub client raises HTTP, connection, offline and cache-miss errors alike
        raise _hub_failure(repo_id, "download", exc) from None
    return checkpoint_root(path)


# ---- destinations ---------------------------------------------------------------------------------------------------
def write_archive(directory: Path, target: Path, arcname: str) -> None:
    """Write ``directory`` as an archive ``target`` (.tar.gz, .tgz, .tar or .zip by its name) whose one top-level
    directory is ``arcname``; written under a temporary name and renamed, so a failure leaves no partial file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with open(fd, "wb") as fh:
            if str(target).lower().endswith(".zip"):
                with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                    for path in sorted(directory.rglob("*")):
                        if path.is_file():
                            zf.write(path, f"{arcname}/{path.relative_to(directory).as_posix()}")
            else:
                mode = "w" if str(target).lower().endswith(".tar") else "w:gz"
                with tarfile.open(fileobj=fh, mode=mode) as tar:
                    tar.add(directory, arcname=arcname)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def push_to_hub(directory: Path, repo_id: str, message: str, private: bool = False) -> str:
    """Upload a checkpoint directory to the hub repository ``repo_id`` (created if missing); returns its URL."""
    from huggingface_hub import HfApi

    if not HUB_REPO_ID.fullmatch(repo_id):
        raise CheckpointError(f"{repo_id!r} is not a Hugging Face hub repository id (owner/name)")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=directory, commit_message=message)
    except Exception as exc:  # the hub client raises HTTP, connection and offline errors alike
        raise _hub_failure(repo_id, "push to", exc) from None
    return str(url)
