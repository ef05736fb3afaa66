"""Security: API keys, roles and (later) JWT, revocation and message signing."""
