// The pipeline editor's page script (web/editor.py, templates/edit.html): live checks as you
// type, the line gutter, the DAG redrawn, and a node's preview. Served as a file, never
// inline, so the UI's Content-Security-Policy allows no inline script (web/headers.py).
// The URLs it posts to are the form's data-check-url and data-preview-url.
(() => {
  const form = document.getElementById("editor"), text = document.getElementById("text");
  const gutter = document.getElementById("gutter"), state = document.getElementById("check-state");
  const errors = document.getElementById("errors"), warnings = document.getElementById("warnings");
  const ok = document.getElementById("check-ok"), dag = document.getElementById("dag");
  const dagState = document.getElementById("dag-state"), select = document.getElementById("preview-node");
  const out = document.getElementById("preview"), dirty = document.getElementById("dirty");
  const saved = text.value;
  let timer = null, sequence = 0, bad = new Set(), warn = new Set(), submitting = false;
  // The one string the page turns into markup: the DAG's SVG, drawn and escaped by the
  // server (report/charts.py, as on the pipeline page). The CSP's Trusted Types rule makes
  // any other innerHTML of a string throw (browsers without Trusted Types: a plain pass).
  const serverSvg = window.trustedTypes
    ? window.trustedTypes.createPolicy("segloop-dag", {createHTML: svg => svg})
    : {createHTML: svg => svg};

  function el(tag, cls, content) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (content !== undefined) node.textContent = content;
    return node;
  }
  function lines(list) { return new Set(Array.from(list.children).map(li => Number(li.dataset.line)).filter(Boolean)); }
  function drawGutter() {
    const count = text.value.split("\n").length, numbers = document.createDocumentFragment();
    for (let i = 1; i <= count; i++) {
      const mark = bad.has(i) ? "err" : warn.has(i) ? "warn" : "";
      numbers.append(mark ? el("span", mark, String(i)) : String(i), "\n");
    }
    gutter.replaceChildren(numbers);
    gutter.scrollTop = text.scrollTop;
  }
  function goTo(line) {
    if (!line) return;
    const before = text.value.split("\n").slice(0, line - 1).join("\n").length + (line > 1 ? 1 : 0);
    text.focus();
    text.setSelectionRange(before, before);
    text.scrollTop = Math.max(0, (line - 4) * parseFloat(getComputedStyle(text).lineHeight));
  }
  function fill(list, items, cls) {
    list.replaceChildren(...items.map(p => { const li = el("li", cls, p.text); li.dataset.line = p.line || ""; return li; }));
  }
  function fields(extra) {
    const data = new URLSearchParams(new FormData(form));
    for (const [k, v] of Object.entries(extra || {})) data.set(k, v);
    return data;
  }
  async function post(url, extra) {
    const response = await fetch(url, {method: "POST", body: fields(extra), credentials: "same-origin"});
    let body = null;
    try { body = await response.json(); } catch (e) { body = {error: `the server answered ${response.status}`}; }
    if (!response.ok && !body.error) body.error = `the server answered ${response.status}`;
    return body;
  }
  async function check() {
    const mine = ++sequence;
    state.textContent = "checking…";
    const found = await post(form.dataset.checkUrl);
    if (mine !== sequence) return;  // a newer check is on its way
    if (found.error) { state.textContent = found.error; return; }
    fill(errors, found.errors, "error");
    fill(warnings, found.warnings, "warning");
    ok.hidden = found.errors.length > 0;
    ok.textContent = found.summary || "";
    const problems = found.errors.length ? `${found.errors.length} error${found.errors.length > 1 ? "s" : ""}` : "valid";
    state.textContent = problems + (found.warnings.length ? `, ${found.warnings.length} warning${found.warnings.length > 1 ? "s" : ""}` : "");
    if (found.dag) {
      dag.innerHTML = serverSvg.createHTML(found.dag);
      dag.classList.remove("stale");
      dagState.textContent = "";
      const chosen = select.value;
      select.replaceChildren(...found.nodes.map(n => { const o = el("option", "", `${n.name} (${n.type})`); o.value = n.name; return o; }));
      if (found.nodes.some(n => n.name === chosen)) select.value = chosen;
    } else {
      dag.classList.add("stale");
      dagState.textContent = "not redrawn: fix the errors first";
    }
    bad = lines(errors); warn = lines(warnings);
    drawGutter();
  }
  async function preview() {
    out.replaceChildren(el("p", "muted", `running ${select.value}…`));
    const result = await post(form.dataset.previewUrl, {node: select.value});
    out.replaceChildren();
    if (result.error) { out.append(el("p", "error", result.error)); out.firstChild.id = "preview-error"; return; }
    if (result.total !== null && result.total !== undefined) {
      out.append(el("p", "muted", `${result.node}: first ${result.rows.length} of ${result.total.toLocaleString("en")} rows`));
    }
    if (result.columns.length) {
      const table = el("table", "data"); table.id = "preview-rows";
      const head = el("tr"); result.columns.forEach(c => head.append(el("th", "", c)));
      table.append(el("thead")); table.tHead.append(head);
      const body = el("tbody");
      result.rows.forEach(r => { const tr = el("tr"); r.forEach(v => tr.append(el("td", "", v))); body.append(tr); });
      table.append(body);
      const wrap = el("div", "scroll"); wrap.append(table); out.append(wrap);
    }
    result.warnings.forEach(w => out.append(el("p", "warning", "warning: " + w)));
    if (result.metrics.length) {
      const table = el("table", "metrics"); table.id = "preview-metrics";
      result.metrics.forEach(([k, v]) => { const tr = el("tr"); tr.append(el("th", "", k), el("td", /^-?[\d,.]+$/.test(v) ? "num" : "", v)); table.append(tr); });
      out.append(el("h4", "", "metrics"), table);
    }
    result.payloads.forEach(p => out.append(el("pre", "payload", p)));
  }
  text.addEventListener("input", () => {
    dirty.textContent = text.value === saved ? "" : "unsaved changes";
    drawGutter();
    clearTimeout(timer);
    timer = setTimeout(check, 300);
  });
  text.addEventListener("scroll", () => { gutter.scrollTop = text.scrollTop; });
  text.addEventListener("keydown", event => {
    if (event.key === "Tab" && !event.shiftKey && !event.altKey && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();  // YAML is indented with spaces
      text.setRangeText("  ", text.selectionStart, text.selectionEnd, "end");
      text.dispatchEvent(new Event("input"));
    }
  });
  for (const list of [errors, warnings]) list.addEventListener("click", e => goTo(Number(e.target.dataset.line)));
  document.getElementById("preview-run").addEventListener("click", preview);
  form.addEventListener("submit", () => { submitting = true; });
  window.addEventListener("beforeunload", e => { if (!submitting && text.value !== saved) e.preventDefault(); });
  bad = lines(errors); warn = lines(warnings);
  drawGutter();
})();
