"""The UI's one guard: an ASGI middleware in front of every route (docs/security.md).

Bound to loopback, only loopback Host headers are accepted (no DNS rebinding); bound to
any other address, every request needs the token (``?token=`` once, then a cookie, or
``Authorization: Bearer``). Every state-changing request (any method but GET and HEAD,
on any route, present or future) must come from the UI's own pages: no foreign or
``null`` Origin, ``Sec-Fetch-Site: same-origin`` when sent, and from a browser the
server's CSRF token, which `with_csrf` puts into every ``<form method="post">`` of a
page. Routes and templates need nothing of their own.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_COOKIE = "segloop_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
SAFE_METHODS = ("GET", "HEAD")
CSRF_FIELD = "csrf_token"
"""The hidden form field carrying the CSRF token (`with_csrf` adds it to every POST form)."""
CSRF_HEADER = "x-csrf-token"
"""The header a script on the UI's pages sends the token in (read from ``<meta name="csrf-token">``)."""
MAX_FORM_BYTES = 4_000_000
"""A state-changing request body larger than this is refused (413) before it is read further."""


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


CSRF_TOKEN: ContextVar[str | None] = ContextVar("segloop_csrf_token", default=None)
"""The serving app's CSRF token, set by the Guard for the request being handled."""

_POST_FORM = re.compile(r"""<form\b[^>]*\bmethod\s*=\s*["']?post\b[^>]*>""", re.I)


def with_csrf(html: str, token: str | None) -> str:
    """``html`` with the CSRF token in every POST form (a hidden field) and in a ``<meta>`` for scripts."""
    if not token:
        return html
    field = f'<input type="hidden" name="{CSRF_FIELD}" value="{token}">'
    html = _POST_FORM.sub(lambda match: match.group(0) + field, html)
    return html.replace("</head>", f'<meta name="csrf-token" content="{token}">\n</head>', 1)


class Guard:
    """ASGI middleware in front of every route: Host check on loopback, token elsewhere, CSRF.

    A state-changing request (any method but GET and HEAD) must show it comes from the
    UI's own pages: an ``Origin`` header, when sent, names this server (``null``, sent by
    sandboxed frames, ``data:`` pages and after cross-site redirects, is refused); a
    ``Sec-Fetch-Site`` header, when sent, says ``same-origin``; and a request from a
    browser carries the CSRF token in the form field or the ``X-CSRF-Token`` header
    (covering browsers that send neither header). Clients that are not browsers (curl,
    scripts: no Origin, no Sec-Fetch-*, no ``Mozilla/`` user agent) cannot be steered by
    a web page, and need no CSRF token.
    """

    def __init__(self, app: ASGIApp, token: str | None, loopback: bool, csrf_token: str | None = None):
        self.app = app
        self.token = token
        self.loopback = loopback
        self.csrf_token = csrf_token or secrets.token_urlsafe(32)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        hostname = urlsplit(f"//{host}").hostname or ""
        if self.loopback and not is_loopback(hostname):
            await _plain(403, "segloop ui: unexpected Host header; open it as http://127.0.0.1:PORT/")(scope, receive, send)
            return
        unsafe = scope["method"] not in SAFE_METHODS
        if unsafe:
            refusal = _foreign_request(headers, host)
            if refusal:
                await _plain(403, f"segloop ui: refused {scope['method']} {scope['path']}: {refusal}; "
                                  "use the buttons of the UI's own pages")(scope, receive, send)
                return
        bearer = False
        if self.token is not None:
            query = dict(parse_qsl(scope.get("query_string", b"").decode()))
            given = query.get("token")
            if given is not None and secrets.compare_digest(given, self.token):
                rest = urlencode({k: v for k, v in query.items() if k != "token"})
                target = scope["path"] + (f"?{rest}" if rest else "")
                response = RedirectResponse(target, status_code=303)
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
                await response(scope, receive, send)
                return
            bearer = self._bearer(headers)
            if not bearer and not self._cookie(headers):
                await _plain(401, "segloop ui: this server needs its token; open the URL with ?token=... "
                                  "printed at start (or set in SEGLOOP_UI_TOKEN)")(scope, receive, send)
                return
        if unsafe and not bearer and _from_browser(headers):
            proven, receive = await self._csrf_proof(scope, receive, headers)
            if proven is None:
                await _plain(413, f"segloop ui: request body over {MAX_FORM_BYTES:,} bytes refused")(scope, receive, send)
                return
            if not proven:
                await _plain(403, "segloop ui: this form has no valid CSRF token (the page may be older than "
                                  "the running server); reload the page and try again")(scope, receive, send)
                return
        reset = CSRF_TOKEN.set(self.csrf_token)
        try:
            await self.app(scope, receive, send)
        finally:
            CSRF_TOKEN.reset(reset)

    async def _csrf_proof(self, scope: Scope, receive: Receive, headers: dict[str, str]) -> tuple[bool | None, Receive]:
        """Whether the request carries the CSRF token (None: body too large), and a receive that replays the body."""
        given = headers.get(CSRF_HEADER)
        if given is not None:
            return secrets.compare_digest(given.encode(), self.csrf_token.encode()), receive
        if headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            return False, receive
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False, receive
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_FORM_BYTES:
                return None, receive
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        fields = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        given = next((value for key, value in fields if key == CSRF_FIELD), "")
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        return secrets.compare_digest(given.encode(), self.csrf_token.encode()), replay

    def _bearer(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        return auth.lower().startswith("bearer ") and secrets.compare_digest(auth[7:].strip(), self.token or "")

    def _cookie(self, headers: dict[str, str]) -> bool:
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # http.cookies raises CookieError on a malformed header: not authorized
            return False
        morsel = cookie.get(TOKEN_COOKIE)
        return morsel is not None and secrets.compare_digest(morsel.value, self.token or "")


def _foreign_request(headers: dict[str, str], host: str) -> str | None:
    """Why a state-changing request did not come from this server's pages, or None."""
    origin = headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
            return f"it came from another origin ({origin.strip()[:80] or 'empty'})"
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.strip().lower() != "same-origin":
        return f"the browser says it came from another site (Sec-Fetch-Site: {fetch_site.strip()[:40]})"
    return None


def _from_browser(headers: dict[str, str]) -> bool:
    """Sent by a web browser (which a web page can steer): every browser's user agent starts with Mozilla/."""
    return ("origin" in headers or "sec-fetch-site" in headers or "sec-fetch-mode" in headers
            or headers.get("user-agent", "").startswith("Mozilla/"))


def _plain(status: int, text: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    return Response(text + "\n", status_code=status, media_type="text/plain")
