"""Security headers on every UI response: a strict Content-Security-Policy and its companions.

The pages show workspace data (node names, column values, run errors, run reports), and
Jinja2's autoescape prints it as text. The policy is the second wall, for the day markup
slips through: the browser runs no script but the UI's own files under ``/static/`` (no
inline script, no ``onerror=`` handler, no ``javascript:`` URL, no ``eval``; by Trusted
Types, no markup made from a string but the editor's DAG), applies no style but the one
stylesheet the UI and the run report share (allowed by its SHA-256, so an injected
``<style>`` or ``style=`` attribute is ignored), loads nothing from another origin, sends
forms and ``fetch`` only to this server, and no other site may frame a page.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from segloop.report.html import STYLE_FILE

_STYLE_ELEMENT = re.compile(r"<style>(.*?)</style>", re.S)


def style_hash(css: str) -> str:
    """The CSP source that allows an inline ``<style>`` element whose text is ``css``."""
    digest = hashlib.sha256(css.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


@cache
def stylesheet() -> str:
    """The text of the one ``<style>`` element the UI and the run report share."""
    found = _STYLE_ELEMENT.search(STYLE_FILE.read_text(encoding="utf-8"))
    if found is None:  # a packaging fault, not a user's: say which file
        raise RuntimeError(f"{STYLE_FILE} has no <style> element; the UI's style policy is built from it")
    return found.group(1)


def with_current_stylesheet(report: str) -> str:
    """A report file's HTML with today's stylesheet in its head.

    A report written by an older segloop carries the stylesheet of its day, whose hash the
    policy does not allow: served as it is, it would show unstyled. Only the first
    ``<style>`` of the ``<head>`` is replaced, the one the report writer puts there before
    any workspace data (which is escaped, so it can hold no ``<style>`` of its own).
    """
    head, sep, body = report.partition("</head>")
    if not sep:
        return report
    head = _STYLE_ELEMENT.sub(lambda _: f"<style>{stylesheet()}</style>", head, count=1)
    return head + sep + body


@cache
def policy() -> str:
    """The Content-Security-Policy of every UI response."""
    return "; ".join([
        "default-src 'none'",           # nothing that is not listed below
        "script-src 'self'",            # /static/*.js only: no inline script, no handlers, no eval
        f"style-src {style_hash(stylesheet())}",  # the shared stylesheet, byte for byte
        "img-src 'self'",               # (no images today; a favicon request stays silent)
        "connect-src 'self'",           # the editor's fetch() to /edit/check and /edit/preview
        "form-action 'self'",           # every form posts back to this server
        "frame-ancestors 'none'",       # no other page may frame the UI (clickjacking)
        "base-uri 'none'",              # an injected <base> cannot redirect relative URLs
        # Trusted Types: a script may turn a string into markup only through the editor's one
        # policy (the server's DAG SVG); any other innerHTML of a string throws.
        "require-trusted-types-for 'script'",
        "trusted-types segloop-dag",
    ])


@cache
def security_headers() -> tuple[tuple[str, str], ...]:
    """Every header the UI sets on every response, the CSP first."""
    return (
        ("content-security-policy", policy()),
        ("x-content-type-options", "nosniff"),  # a page or JSON answer is never run as a script
        ("x-frame-options", "DENY"),  # frame-ancestors for browsers that predate it
        ("referrer-policy", "same-origin"),  # links out of the UI do not carry its URLs (no-referrer would make
        # browsers send `Origin: null` with the UI's own form posts, which the Guard refuses)
        ("cross-origin-opener-policy", "same-origin"),  # a page the UI opened cannot script it back
        ("cross-origin-resource-policy", "same-origin"),  # no other site may embed its answers
    )


class SecurityHeaders:
    """ASGI middleware: every HTTP response of the wrapped app gets ``security_headers()``.

    It wraps the Guard, so the 401/403/413 refusals carry them too.
    """

    def __init__(self, app: ASGIApp):
        self.app = app
        self.headers = security_headers()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                for name, value in self.headers:
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
