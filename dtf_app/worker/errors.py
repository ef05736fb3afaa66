"""The worker's one error type (a leaf module: the agent and its helpers both raise it)."""

from __future__ import annotations


class WorkerError(Exception):
    """The worker cannot go on; ``exit_code`` is what ``dtf --mode worker`` exits with.

    3: the coordinator cannot be reached; 4: the coordinator refused the API key or this worker's
    credential (enrolment, see dtf_app/protocol.py); 2: bad settings.
    """

    def __init__(self, message: str, *, exit_code: int = 3) -> None:
        super().__init__(message)
        self.exit_code = exit_code
