"""API keys: generation, hashing, roles and permissions (DESIGN.md §10).

A key is shown once when created; only its SHA-256 is kept (in the replicated state), which is enough
for high-entropy random keys (no password stretching needed: nothing to brute-force). All request
authentication goes through :func:`authenticate`, the one place where JWT and revocation will plug in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ROLES = ("admin", "operator", "worker", "viewer")
PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"read", "submit", "cancel", "worker", "admin"}),
    "operator": frozenset({"read", "submit", "cancel"}),
    "worker": frozenset({"worker"}),
    "viewer": frozenset({"read"}),
}
KEY_PREFIX = "dtf_"
WORKER_CREDENTIAL_PREFIX = "dtfw_"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's name and role."""

    name: str
    role: str

    def can(self, permission: str) -> bool:
        return permission in PERMISSIONS.get(self.role, frozenset())


def generate_key() -> str:
    """A new random API key (256 bits of entropy)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def generate_worker_credential() -> str:
    """A new per-worker credential (256 bits of entropy), what binds a worker to its id."""
    return WORKER_CREDENTIAL_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def roles_with(permission: str) -> list[str]:
    """Roles that hold a permission (for error messages)."""
    return [role for role in ROLES if permission in PERMISSIONS[role]]


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The API key from ``X-API-Key`` or ``Authorization: Bearer <key>``."""
    key = headers.get("X-API-Key")
    if key:
        return key.strip()
    auth = headers.get("Authorization") or ""
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def authenticate(key: str | None, api_keys: Mapping[str, Mapping[str, Any]]) -> Principal | None:
    """The principal a key belongs to, or None."""
    if not key:
        return None
    digest = hash_key(key)
    for record in api_keys.values():
        if hmac.compare_digest(record["key_hash"], digest):
            return Principal(record["name"], record["role"])
    return None
