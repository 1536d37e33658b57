"""Every UI response carries a strict Content-Security-Policy (web/headers.py), and the UI's
own pages need nothing it forbids; workspace data full of markup is printed as text.

Over Starlette's test client: the header on every route of the app's route table (refusals
and 404s included), the policy's directives, each page's markup against the policy (no
inline script or handler, no style attribute, every ``<style>`` allowed by its hash), and a
workspace whose description, column names, cell values and run errors are ``<script>`` and
``onerror=`` payloads. tests/security/test_csp_browser.py shows the same in Chromium.
"""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markupsafe import escape
from starlette.testclient import TestClient

from segloop.config import Workspace
from segloop.scheduler import BackgroundRuns
from segloop.web.app import create_app
from tests.security.hostile import (
    COLUMN,
    IMG,
    PAYLOADS,
    SCRIPT,
    STYLE,
    TABLE,
    hostile_workspace,
    last_run_id,
)

LOCAL = "http://127.0.0.1:8765"
COMPANIONS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",  # no-referrer would make the UI's own form posts say `Origin: null`
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace.load(hostile_workspace(tmp_path_factory.mktemp("hostile") / "ws"))


@pytest.fixture
def client(workspace: Workspace) -> TestClient:
    return TestClient(create_app(workspace, runs=BackgroundRuns(workspace)), base_url=LOCAL)


def pages(workspace: Workspace) -> dict[str, str]:
    """Every page a user opens, on the hostile workspace."""
    run = last_run_id(workspace)
    return {
        "overview": "/",
        "pipeline": "/pipelines/hostile",
        "table": "/pipelines/hostile/nodes/notes/table",
        "run": f"/runs/{run}",
        "report": f"/runs/{run}/report",
        "editor": "/pipelines/hostile/edit",
        "preview": "/pipelines/hostile/nodes/notes/preview",
        "error": "/pipelines/hostile/nodes/broken/table",
    }


def directives(policy: str) -> dict[str, list[str]]:
    out = {}
    for part in policy.split(";"):
        name, *sources = part.split()
        out[name] = sources
    return out


def test_the_policy_allows_only_the_uis_own_scripts_and_stylesheet(client: TestClient) -> None:
    policy = directives(client.get("/").headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval', no hosts
    [style] = policy["style-src"]
    assert re.fullmatch(r"'sha256-[A-Za-z0-9+/]{43}='", style)  # the one stylesheet, by its hash
    assert policy["frame-ancestors"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    assert policy["form-action"] == ["'self'"] and policy["connect-src"] == ["'self'"]
    # scripts make markup from strings only through the editor's one Trusted Types policy
    assert policy["require-trusted-types-for"] == ["'script'"] and policy["trusted-types"] == ["segloop-dag"]
    assert not any(s in ("*", "data:", "http:", "https:", "'unsafe-inline'", "'unsafe-eval'", "'unsafe-hashes'")
                   for sources in policy.values() for s in sources)


def test_every_route_and_every_refusal_carries_the_headers(client: TestClient, workspace: Workspace) -> None:
    app = client.app
    while not hasattr(app, "routes"):  # the middlewares in front of the Starlette app
        app = app.app  # type: ignore[attr-defined]
    run = last_run_id(workspace)
    answers = []
    for route in app.routes:
        path = route.path.replace("{name}", "hostile").replace("{node}", "notes").replace("{run_id}", run)
        path = path + "/editor.js" if path == "/static" else path
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            # state-changing ones from another site: refused, so nothing runs or is saved
            foreign = {} if method in ("GET", "HEAD") else {"origin": "http://evil.example"}
            answers.append(client.request(method, path, headers=foreign, follow_redirects=False))
    answers += [
        client.post("/pipelines/hostile/edit/check", data={"text": "name: hostile\n"}),  # JSON, 200
        client.get("/pipelines/nope"),  # 404 page
        client.get("/no/such/route"),  # Starlette's own 404
        client.get("/", headers={"host": "evil.example"}),  # the Guard's 403 (DNS rebinding)
        client.post("/pipelines/hostile/run", headers={"origin": "http://evil.example"}),  # CSRF refusal
    ]
    assert {a.status_code for a in answers} >= {200, 403, 404}
    assert any(a.headers["content-type"].startswith("application/json") for a in answers)
    policy = answers[0].headers["content-security-policy"]
    for answer in answers:
        where = (answer.request.method, answer.request.url.path, answer.status_code)
        assert answer.headers.get("content-security-policy") == policy, where
        for name, value in COMPANIONS.items():
            assert answer.headers.get(name) == value, (where, name)
    assert len(answers) >= 14


class Markup(HTMLParser):
    """What a page needs from the policy: its scripts, handlers, style attributes and <style> texts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[str | None] = []
        self.handlers: list[str] = []
        self.style_attributes: list[str] = []
        self.styles: list[str] = []
        self.javascript_urls: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append(f"<{tag} {name}=...>")
            if name == "style":
                self.style_attributes.append(f"<{tag} style={value}>")
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                self.javascript_urls.append(f"<{tag} {name}={value}>")
        if tag == "script":
            self.scripts.append(dict(attrs).get("src"))
        if tag == "style":
            self._in = "style"
            self.styles.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "style":
            self.styles[-1] += data


def style_source(css: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(css.encode()).digest()).decode() + "'"


def test_every_page_needs_nothing_the_policy_forbids(client: TestClient, workspace: Workspace) -> None:
    """A page that relied on inline script or styles would break under the policy: none does."""
    for name, path in pages(workspace).items():
        page = client.get(path)
        assert page.status_code == (404 if name == "error" else 200), (name, page.text[:300])
        allowed = directives(page.headers["content-security-policy"])
        markup = Markup()
        markup.feed(page.text)
        assert markup.handlers == [] and markup.style_attributes == [] and markup.javascript_urls == [], name
        assert all(src is not None and src.startswith("/static/") for src in markup.scripts), (name, markup.scripts)
        assert markup.styles, name  # styled, by the stylesheet the policy names
        assert all(style_source(css) in allowed["style-src"] for css in markup.styles), name
    editor = Markup()
    editor.feed(client.get("/pipelines/hostile/edit").text)
    assert editor.scripts == ["/static/editor.js"]
    script = client.get("/static/editor.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "form.dataset.checkUrl" in script.text


def test_markup_in_workspace_data_is_printed_as_text(client: TestClient, workspace: Workspace) -> None:
    shown: dict[str, set[str]] = {}
    for name, path in pages(workspace).items():
        text = client.get(path).text
        for payload in PAYLOADS:
            assert payload not in text, (name, payload)  # never as markup
            if str(escape(payload)) in text:  # as Jinja2's autoescape and the report print it
                shown.setdefault(payload, set()).add(name)
        # no element the payloads would make: only the page's own script and style elements
        markup = Markup()
        markup.feed(text)
        assert markup.handlers == [] and len(markup.styles) == 1, name
    # each payload reached a page, as text, where a user would look for it
    assert {"overview", "pipeline", "editor"} <= shown[SCRIPT] and "table" in shown[SCRIPT]
    assert "table" in shown[IMG] and "table" in shown[COLUMN] and "table" in shown[STYLE]
    assert {"pipeline", "run", "report"} <= shown[TABLE]


def test_the_report_file_opened_from_disk_is_escaped_too(workspace: Workspace) -> None:
    """The same report, opened as a file (no server, so no header): escaping is its only wall."""
    reports = list(Path(workspace.root).rglob("*.html"))
    assert reports, "the run wrote no report"
    for report in reports:
        text = report.read_text(encoding="utf-8")
        assert TABLE not in text and str(escape(TABLE)) in text
        assert "<script" not in text


def test_a_report_written_with_an_older_stylesheet_is_served_styled(client: TestClient, workspace: Workspace) -> None:
    """Reports on disk keep the stylesheet of the segloop that wrote them; the policy allows
    today's only, so the report page serves them with today's (an old one would show bare)."""
    run = last_run_id(workspace)
    file = Path(workspace.root) / ".segloop" / "runs" / run / "report.html"
    written = file.read_text(encoding="utf-8")
    older = re.sub(r"<style>.*?</style>", "<style>\n  body { margin: 8px; }\n</style>", written, count=1, flags=re.S)
    assert older != written
    file.write_text(older, encoding="utf-8")
    try:
        page = client.get(f"/runs/{run}/report")
    finally:
        file.write_text(written, encoding="utf-8")
    markup = Markup()
    markup.feed(page.text)
    allowed = directives(page.headers["content-security-policy"])["style-src"]
    assert len(markup.styles) == 1 and style_source(markup.styles[0]) in allowed
    assert page.text.split("</head>")[1] == older.split("</head>")[1]  # the report itself as written
