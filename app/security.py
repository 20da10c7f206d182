"""API-key checks for `/v1` routes: one key for reads, one for writes (header ``X-API-Key``).

Reads are protected too, because recommendations and explanations reveal a
user's history. The write key also grants reads.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def _matches(given: str | None, expected: str | None) -> bool:
    return given is not None and expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def require_read_key(request: Request, api_key: str | None = Depends(api_key_header)) -> None:
    """Reject the request with 401 unless it carries the read or the write key."""
    settings = request.app.state.settings
    if settings.local_dev and not (settings.api_read_key or settings.api_write_key):
        return
    if _matches(api_key, settings.api_read_key) or _matches(api_key, settings.api_write_key):
        return
    raise HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="missing or invalid API key: send the read or write key in the X-API-Key header",
        headers={"WWW-Authenticate": "ApiKey"},
    )


def require_write_key(request: Request, api_key: str | None = Depends(api_key_header)) -> None:
    """Reject the request with 401 unless it carries the write key."""
    settings = request.app.state.settings
    if settings.local_dev and not settings.api_write_key:
        return
    if _matches(api_key, settings.api_write_key):
        return
    raise HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="missing or invalid API key: this route changes data and needs the write key in X-API-Key",
        headers={"WWW-Authenticate": "ApiKey"},
    )
