"""Admin actions: off unless a flag enables them, and token-checked when a token file is given.

Two kinds of admin action exist: profiling (POST/DELETE /profile on the HTTP
port) and repository control (RepositoryModelLoad/Unload on the gRPC port).
Both go through `AdminGate.check`, which raises the ServingError the transport
maps to its status (server/errors.py), counts the refusal by action and reason
for `modelsoak_admin_refused_total`, and logs it with the peer's address.
"""

from __future__ import annotations

import hmac
import logging
import threading
from typing import TYPE_CHECKING

from server.errors import AdminDisabled, Unauthenticated

if TYPE_CHECKING:
    from server.config import ServerSettings

log = logging.getLogger("modelsoak.admin")

PROFILING = "profiling"
REPOSITORY = "repository"

_HOW_TO_ENABLE = {
    PROFILING: "profiling is off; start the server with --allow-profiling to allow it",
    REPOSITORY: "repository control is off (--model-control-mode none); start the server with "
    "--model-control-mode explicit to allow RepositoryModelLoad/RepositoryModelUnload",
}


class AdminGate:
    """Decides whether an admin action may run, and counts the ones refused."""

    def __init__(self, settings: ServerSettings) -> None:
        self.enabled = {
            PROFILING: settings.allow_profiling,
            REPOSITORY: settings.model_control_mode == "explicit",
        }
        path = settings.admin_token_file
        # Validated non-empty by ServerSettings; bytes, for hmac.compare_digest.
        self._token = path.read_text().strip().encode() if path is not None else None
        self._lock = threading.Lock()
        self._refused: dict[tuple[str, str], int] = {}
        for action, on in self.enabled.items():
            if on and self._token is None:
                log.warning("admin action %s is enabled without --admin-token-file: anyone who "
                            "reaches the port may use it", action)  # fmt: skip

    @property
    def token_required(self) -> bool:
        return self._token is not None

    def check(self, action: str, authorization: str | None, peer: str) -> None:
        """Return when `action` may run for a caller that sent `authorization`
        (the Authorization header / metadata value, or None); raise otherwise."""
        if not self.enabled[action]:
            self._refuse(action, "disabled", peer)
            raise AdminDisabled(_HOW_TO_ENABLE[action])
        if self._token is None:
            return
        if not authorization:
            self._refuse(action, "missing_token", peer)
            raise Unauthenticated(
                f"{action} needs the admin token: send 'authorization: Bearer <token>' "
                "(the token in the server's --admin-token-file)"
            )
        scheme, _, given = authorization.strip().partition(" ")
        # compare_digest takes time independent of where the two first differ.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
            self._refuse(action, "bad_token", peer)
            raise Unauthenticated(f"{action}: the bearer token does not match the admin token")

    def _refuse(self, action: str, reason: str, peer: str) -> None:
        with self._lock:
            key = (action, reason)
            self._refused[key] = self._refused.get(key, 0) + 1
        log.warning("admin action %s refused (%s) from %s", action, reason, peer)

    def refused(self) -> dict[tuple[str, str], int]:
        """Refusals so far by (action, reason)."""
        with self._lock:
            return dict(self._refused)
