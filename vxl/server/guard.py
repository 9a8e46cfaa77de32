"""Who may use the server, checked before any route reads a byte of the body: a Bearer API key on every
route but /health (`--api-key`, `VXL_API_KEY`), a Host header from an allow list (a page on another site
that re-points its own DNS name at 127.0.0.1 reaches a local server under its own Host), and no
cross-site browser request (a request with an Origin other than the server's own, unless listed in
`--allowed-origins`): a web page in the user's browser cannot drive a server on localhost."""
from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import JSONResponse

from vxl.server.protocol import error_body

OPEN_PATHS = ("/health",)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass
class Guard:
    api_key: str | None = None
    allowed_hosts: set[str] | None = None       # host names (no port); None: any
    allowed_origins: set[str] = field(default_factory=set)      # scheme://host[:port] of other sites allowed

    def refusal(self, request: Request) -> JSONResponse | None:
        """The error response for a request this server must not serve, else None."""
        host = request.headers.get("host", "")
        name = urlsplit(f"//{host}").hostname or ""
        if self.allowed_hosts is not None and name not in self.allowed_hosts:
            return refuse(f"Host {host!r} is not served here (allowed: {sorted(self.allowed_hosts)})", 403,
                          "host_not_allowed")
        origin = request.headers.get("origin")
        if origin is not None and origin not in self.allowed_origins and urlsplit(origin).netloc != host:
            return refuse(f"cross-site requests from {origin!r} are refused (--allowed-origins lists the sites "
                          "that may call this server)", 403, "origin_not_allowed")
        if self.api_key is not None and request.url.path not in OPEN_PATHS:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return refuse("a valid API key is required: Authorization: Bearer <key>", 401, "invalid_api_key")
        return None


def refuse(message: str, status: int, code: str) -> JSONResponse:
    return JSONResponse(error_body(message, status, code), status_code=status)


def default_hosts(bound_host: str) -> set[str] | None:
    """Host names a server bound to `bound_host` answers to by default: a loopback bind, the loopback
    names; a named address, itself and the loopback names; a wildcard bind (0.0.0.0, ::), any."""
    if bound_host in ("0.0.0.0", "::", ""):
        return None
    return {bound_host.strip("[]"), *LOOPBACK_NAMES}
