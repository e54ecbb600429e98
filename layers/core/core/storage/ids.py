"""Identifiers. Contact ids derive from the address, so an import is an idempotent upsert and
one address can only ever be one contact of a user (deduplication by construction)."""

from __future__ import annotations

import hashlib
import secrets
import time

SUBTASK_SHARDS = 16


def normalize_email(address: str) -> str:
    return address.strip().casefold()


def contact_id_for(email: str) -> str:
    return "ct_" + hashlib.sha256(normalize_email(email).encode()).hexdigest()[:24]


def new_id(prefix: str) -> str:
    """Time-ordered, unguessable id: lists sorted by id come out in creation order."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def subtask_partition(task_id: str, contact_id: str) -> str:
    """Subtasks of one task spread over SUBTASK_SHARDS partition keys so a large task never
    pushes more than one key's worth of writes (about 1,000/s) into a single partition."""
    shard = int(hashlib.sha256(contact_id.encode()).hexdigest()[:4], 16) % SUBTASK_SHARDS
    return f"{task_id}#{shard:02d}"


def queue_key(service_id: str, task_id: str) -> str:
    """Partition key of the sparse queue index: queued subtasks of one task on one service."""
    return f"{service_id}#{task_id}"
