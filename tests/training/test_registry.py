"""training/registry.py: versions, the current pointer (file and Redis), promotion, rollback, first-run creation."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis
import torch

from sag import SaG, read_metadata, tiny_config
from training.registry import Registry, RegistryError, main


def _model(seed: int) -> SaG:
    torch.manual_seed(seed)
    return SaG(tiny_config())


def test_add_lists_complete_versions_and_ignores_hidden_and_broken(tmp_path):
    registry = Registry(tmp_path)
    first = registry.add(_model(0), {"note": "first"})
    second = registry.add(_model(1))
    (tmp_path / ".incoming-abandoned").mkdir()  # a crashed save
    (tmp_path / "not-a-checkpoint").mkdir()  # a stray directory
    ids = [v.id for v in registry.versions()]
    assert ids == sorted([first.id, second.id])
    assert read_metadata(first.path)["note"] == "first"
    assert registry.get(first.id).metadata["version"] == first.id
    assert registry.current() is None


def test_promote_and_rollback_with_files(tmp_path):
    registry = Registry(tmp_path)
    a, b = registry.add(_model(0)).id, registry.add(_model(1)).id
    registry.promote(a)
    registry.promote(b)
    assert registry.current() == b
    assert (tmp_path / "CURRENT").read_text().strip() == b
    assert registry.rollback().id == a  # back to the one before
    assert registry.current() == a
    registry.rollback(b)  # or to any listed version
    assert Registry(tmp_path).current() == b  # a new process reads the same pointer
    with pytest.raises(RegistryError, match="unknown model version"):
        registry.promote("20990101T000000Z-deadbeef")
    with pytest.raises(RegistryError, match="invalid version"):
        registry.promote("../etc")


def test_rollback_without_history_is_an_error(tmp_path):
    registry = Registry(tmp_path)
    registry.promote(registry.add(_model(0)).id)
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()


def test_pointer_in_redis_is_shared_and_files_untouched(tmp_path):
    conn = redis.Redis("127.0.0.1", 6379)
    try:
        conn.ping()
    except redis.RedisError:
        pytest.skip("Redis is not listening on 127.0.0.1:6379")
    prefix = f"sag-test-{uuid.uuid4().hex}:model"
    try:
        writer = Registry(tmp_path, conn, prefix=prefix)
        a, b = writer.add(_model(0)).id, writer.add(_model(1)).id
        writer.promote(a)
        writer.promote(b)
        reader = Registry(tmp_path, redis.Redis("127.0.0.1", 6379), prefix=prefix)
        assert reader.current() == b
        assert reader.history() == [a, b]
        assert not (tmp_path / "CURRENT").exists()
        reader.rollback()
        assert writer.current() == a
    finally:
        conn.delete(f"{prefix}:current", f"{prefix}:history")


def test_ensure_current_builds_exactly_one_version_under_concurrency(tmp_path):
    builds = []

    def build():
        builds.append(1)
        return _model(0), {"preset": "tiny", "trained": False}

    results = []
    threads = [threading.Thread(target=lambda: results.append(Registry(tmp_path).ensure_current(build).id))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert len(set(results)) == 1
    assert [v.id for v in Registry(tmp_path).versions()] == results[:1]
    assert Registry(tmp_path).current() == results[0]


def test_cli_lists_promotes_and_reports_errors(tmp_path, capsys):
    registry = Registry(tmp_path)
    a, b = registry.add(_model(0)).id, registry.add(_model(1)).id
    assert main(["--model-dir", str(tmp_path), "--redis-url", "", "promote", a]) == 0
    assert main(["--model-dir", str(tmp_path), "--redis-url", "", "list"]) == 0
    out = capsys.readouterr().out
    assert f"* {a}" in out and f"  {b}" in out
    assert main(["--model-dir", str(tmp_path), "--redis-url", "", "promote", "nope"]) == 2
    assert "unknown model version" in capsys.readouterr().err
