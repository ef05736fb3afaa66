"""TLS for a coordinator: its API (and the ``/raft`` peer endpoint on the same port) and its peer links.

A coordinator with a certificate (``tls_cert`` and ``tls_key``: ``--tls-cert``/``--tls-key`` or
``DTF_TLS_CERT``/``DTF_TLS_KEY``) serves HTTPS, so its Raft endpoint is ``wss://``; peers dial each other
over ``wss://`` and verify the certificate against ``peer_ca`` (``--peer-ca``, ``DTF_PEER_CA``: the CA
bundle that signed the members' certificates), or the system's trust store when none is given. The
cluster secret still authenticates every peer message (TLS adds confidentiality and server identity).

One rule, checked at start (exit 2 with one line): a cluster is all TLS or all plain. With a certificate
every other member's URL must be ``https://``; without one, none may be, and ``peer_ca`` alone means
nothing. A certificate, key or CA that cannot be loaded is named with the reason.
"""

from __future__ import annotations

import ssl
from typing import Any

from dtf_app.config import ConfigError, Settings

__all__ = ["check", "configure_server", "peer_context", "scheme"]


def scheme(settings: Settings) -> str:
    """``https`` for a node with a certificate, else ``http`` (its default advertised URL's scheme)."""
    return "https" if settings.tls_cert else "http"


def check(settings: Settings, members: dict[str, str], self_id: str) -> None:
    """Refuse half-configured TLS (see the module docstring) with one clear line."""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        given, missing = ("--tls-cert", "--tls-key") if settings.tls_cert else ("--tls-key", "--tls-cert")
        raise ConfigError(f"{given} is set but {missing} is not: TLS needs both the certificate and its "
                          "private key (DTF_TLS_CERT and DTF_TLS_KEY)")
    others = {i: u for i, u in members.items() if i != self_id}
    if settings.tls_cert:
        plain = sorted(i for i, u in others.items() if not u.startswith("https://"))
        if plain:
            raise ConfigError(f"this coordinator has a TLS certificate but its peers {', '.join(plain)} have "
                              "http:// URLs: peer traffic would travel in clear; give every member an https:// "
                              "URL (or drop --tls-cert/--tls-key on every node)")
    else:
        secure = sorted(i for i, u in others.items() if u.startswith("https://"))
        if secure:
            raise ConfigError(f"peers {', '.join(secure)} have https:// URLs but this coordinator has no "
                              "certificate: give it --tls-cert and --tls-key (a cluster is all TLS or all plain)")
        if settings.peer_ca:
            raise ConfigError("--peer-ca verifies the certificates of TLS peers, but this coordinator has no "
                              "certificate (--tls-cert/--tls-key): set them too, or drop --peer-ca")
    if settings.peer_ca and not others:
        raise ConfigError("--peer-ca verifies peers' certificates, but this coordinator has no peers (--peers)")


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The context the API serves with (loads the certificate and key: a bad file is a clear error)."""
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--tls-cert {settings.tls_cert} / --tls-key {settings.tls_key}: cannot load them "
                          f"({getattr(exc, 'strerror', None) or exc}); expected a PEM certificate and its "
                          "PEM private key") from None
    return context


def peer_context(settings: Settings, members: dict[str, str], self_id: str) -> ssl.SSLContext | None:
    """The client context peers are dialled with (None for a plain cluster); verifies ``check`` first."""
    check(settings, members, self_id)
    server_context(settings)  # fail at start, not at the first connection, on an unreadable cert or key
    if not settings.tls_cert:
        return None
    try:
        return ssl.create_default_context(cafile=settings.peer_ca) if settings.peer_ca else \
            ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--peer-ca {settings.peer_ca}: cannot load it ({getattr(exc, 'strerror', None) or exc}); "
                          "expected a PEM file of CA certificates") from None


def configure_server(config: Any, settings: Settings) -> None:
    """Make a hypercorn ``Config`` serve TLS when the node has a certificate."""
    if settings.tls_cert:
        config.certfile = settings.tls_cert
        config.keyfile = settings.tls_key
