"""Worker identity: who may act as a worker id (the rules are in :mod:`dtf_app.protocol`'s docstring).

A worker-role API key only proves that its holder may be *a* worker. Which worker it is, is proved by a
per-worker credential bound to the id at its first contact (``EnrollWorker``, committed, so the commit
order settles two workers racing for one id). Only the credential's SHA-256 is kept, like API keys.
Everything here reads the state or proposes commands; the state itself changes in ``state.apply``.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from dtf_app import protocol as proto
from dtf_app.security import keys as keymod

MIN_CREDENTIAL_CHARS = 32
MAX_CREDENTIAL_CHARS = 512


class CredentialRefused(Exception):
    """Acting as this worker id is not allowed (HTTP 403 / websocket close 4403)."""

    code = proto.CREDENTIAL_REFUSED


def credential_from_headers(headers: Mapping[str, str]) -> str | None:
    """The worker credential of a request (``X-Worker-Credential``), or None."""
    value = headers.get(proto.WORKER_CREDENTIAL_HEADER)
    return value.strip() if value and value.strip() else None


def _check_shape(credential: str) -> None:
    if not MIN_CREDENTIAL_CHARS <= len(credential) <= MAX_CREDENTIAL_CHARS or not credential.isascii() \
            or not credential.isprintable():
        raise CredentialRefused(f"a {proto.WORKER_CREDENTIAL_HEADER} must be {MIN_CREDENTIAL_CHARS}-"
                                f"{MAX_CREDENTIAL_CHARS} printable ASCII characters")


def verify(enrolments: Mapping[str, Mapping[str, Any]], worker_id: str, credential: str | None) -> None:
    """Raise :class:`CredentialRefused` unless ``credential`` is the one ``worker_id`` enrolled with."""
    record = enrolments.get(worker_id)
    if record is None:
        raise CredentialRefused(f"worker {worker_id!r} is not enrolled; it enrols by connecting to /ws/worker "
                                "or with POST /api/workers/register")
    if credential is None:
        raise CredentialRefused(f"worker {worker_id!r} is enrolled: acting as it needs its credential in the "
                                f"{proto.WORKER_CREDENTIAL_HEADER} header")
    if not hmac.compare_digest(record["credential_hash"], keymod.hash_key(credential)):
        raise CredentialRefused(f"the {proto.WORKER_CREDENTIAL_HEADER} is not the credential worker {worker_id!r} "
                                f"enrolled with (an admin can free the id with `dtf workers forget {worker_id}`)")


async def admit(coord: Any, worker_id: str, credential: str | None, key_name: str | None) -> str | None:
    """Let a worker act as ``worker_id``, enrolling the id on first contact.

    Returns the credential the coordinator issued (to hand back once) when the id was new and none was
    presented, else None. Raises :class:`CredentialRefused`.
    """
    if credential is not None:
        _check_shape(credential)
    if worker_id in coord.state.enrolments:
        verify(coord.state.enrolments, worker_id, credential)
        return None
    issued = None
    if credential is None:
        issued = credential = keymod.generate_worker_credential()
    (result,) = await coord.propose([{"op": "EnrollWorker", "worker_id": worker_id, "key_name": key_name,
                                      "credential_hash": keymod.hash_key(credential)}])
    if not (isinstance(result, dict) and result.get("enrolled")):
        # Another worker's enrolment of the same id was committed first.
        raise CredentialRefused(f"worker id {worker_id!r} was just enrolled by another worker; pick another id")
    return issued


async def forget(coord: Any, worker_id: str) -> bool:
    """Drop a worker id's enrolment (admin); False when it was not enrolled."""
    (result,) = await coord.propose([{"op": "ForgetWorker", "worker_id": worker_id}])
    return isinstance(result, dict) and bool(result.get("forgotten"))
