"""Progress of bulk pre-labelling batches, and claims that stop a task being queued twice while it is pending.

In Redis (shared by the backend and every worker) with a REDIS_URL, in memory in embedded mode (one process).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Protocol, Sequence

from redis import Redis

from .keys import BATCH_TTL, batch_counted_key, batch_key, pending_key


def new_batch_id() -> str:
    return uuid.uuid4().hex[:16]


class BatchStore(Protocol):
    def create(self, batch_id: str, total: int, project_id: int | None, jobs: int) -> None: ...
    def record(self, batch_id: str, done: int, failed: int, key: str | None = None) -> dict[str, Any]: ...
    def get(self, batch_id: str) -> dict[str, Any] | None: ...
    def claim(self, project_id: int, task_ids: Sequence[int], ttl: int) -> list[bool]: ...
    def release(self, project_id: int, task_ids: Sequence[int]) -> None: ...


def _status(info: dict[str, Any]) -> dict[str, Any]:
    finished = info["done"] + info["failed"]
    info["status"] = "finished" if finished >= info["total"] else ("running" if finished else "queued")
    return info


# Count a job's tasks once: a job that runs again (retried after its worker died or lost Redis) must not count twice.
# Only an existing batch is counted, so a Redis that lost its data does not get a batch without a total.
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' then
  if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 1 end
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
redis.call('HINCRBY', KEYS[1], 'done', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'failed', ARGV[3])
return 1
"""


class RedisBatchStore:
    """Batches as Redis hashes (:func:`~backend.keys.batch_key`, with the set :func:`~backend.keys.batch_counted_key`
    of the jobs already counted); claims as keys :func:`~backend.keys.pending_key`."""

    def __init__(self, redis: Redis):
        self.redis = redis
        self._record = redis.register_script(_RECORD)

    def create(self, batch_id: str, total: int, project_id: int | None, jobs: int) -> None:
        key = batch_key(batch_id)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={"total": total, "done": 0, "failed": 0, "jobs": jobs,
                                    "project": project_id if project_id is not None else "",
                                    "created_at": time.time()})
            pipe.expire(key, BATCH_TTL)
            pipe.execute()

    def record(self, batch_id: str, done: int, failed: int, key: str | None = None) -> dict[str, Any]:
        """Add a job's ``done`` and ``failed`` task counts to the batch, once per ``key`` (the job id) when given;
        returns the batch's progress ({} for an unknown batch)."""
        self._record(keys=[batch_key(batch_id), batch_counted_key(batch_id)], args=[key or "", done, failed, BATCH_TTL])
        return self.get(batch_id) or {}

    def get(self, batch_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(batch_key(batch_id))
        if not raw:
            return None
        data = {k.decode(): v.decode() for k, v in raw.items()}
        if "total" not in data:  # not made by create() (e.g. counted into by an older worker after a data loss)
            return None
        return _status({
            "id": batch_id, "total": int(data["total"]), "done": int(data["done"]), "failed": int(data["failed"]),
            "jobs": int(data["jobs"]), "project": int(data["project"]) if data["project"] else None,
            "created_at": float(data["created_at"]),
        })

    def claim(self, project_id: int, task_ids: Sequence[int], ttl: int) -> list[bool]:
        with self.redis.pipeline() as pipe:
            for task_id in task_ids:
                pipe.set(pending_key(project_id, task_id), 1, nx=True, ex=ttl)
            return [bool(ok) for ok in pipe.execute()]

    def release(self, project_id: int, task_ids: Sequence[int]) -> None:
        if task_ids:
            self.redis.delete(*[pending_key(project_id, t) for t in task_ids])


class MemoryBatchStore:
    """The same, for embedded mode, where the HTTP process runs every job itself."""

    def __init__(self) -> None:
        self._batches: dict[str, dict[str, Any]] = {}
        self._claims: dict[tuple[int, int], float] = {}
        self._counted: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def create(self, batch_id: str, total: int, project_id: int | None, jobs: int) -> None:
        with self._lock:
            self._batches[batch_id] = {"id": batch_id, "total": total, "done": 0, "failed": 0, "jobs": jobs,
                                       "project": project_id, "created_at": time.time()}

    def record(self, batch_id: str, done: int, failed: int, key: str | None = None) -> dict[str, Any]:
        """As :meth:`RedisBatchStore.record`."""
        with self._lock:
            info = self._batches.get(batch_id)
            if info is None:
                return {}
            counted = self._counted.setdefault(batch_id, set())
            if key is not None:
                if key in counted:
                    return _status(dict(info))
                counted.add(key)
            info["done"] += done
            info["failed"] += failed
            return _status(dict(info))

    def get(self, batch_id: str) -> dict[str, Any] | None:
        with self._lock:
            info = self._batches.get(batch_id)
            return _status(dict(info)) if info else None

    def claim(self, project_id: int, task_ids: Sequence[int], ttl: int) -> list[bool]:
        now = time.time()
        with self._lock:
            claimed = []
            for task_id in task_ids:
                key = (project_id, task_id)
                ok = self._claims.get(key, 0.0) < now
                if ok:
                    self._claims[key] = now + ttl
                claimed.append(ok)
            return claimed

    def release(self, project_id: int, task_ids: Sequence[int]) -> None:
        with self._lock:
            for task_id in task_ids:
                self._claims.pop((project_id, task_id), None)
