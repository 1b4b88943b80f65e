"""The dashboard's stylesheet and script, served by the app itself (no CDN,
no build step, nothing else to package)."""

CSS = """
:root { --bg: #f5f6f8; --card: #fff; --ink: #1d2330; --muted: #667085; --line: #e3e6eb;
  --attempts: #9db4d6; --answered: #2f6fb3; --asr: #e07b24; --revenue: #2e8b57;
  --cost: #c0392b; --margin: #6c4bb6; --risk: #d4a017; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
  color: var(--ink); background: var(--bg); }
header { background: #1f2a3c; color: #fff; padding: 10px 18px; display: flex; flex-wrap: wrap;
  align-items: center; gap: 12px 20px; }
header h1 { font-size: 17px; margin: 0 12px 0 0; font-weight: 600; }
header form { display: flex; flex-wrap: wrap; gap: 8px; align-items: end; }
header label { display: flex; flex-direction: column; font-size: 11px; color: #c9d3e3; }
header input, header select, header button { font: inherit; font-size: 13px; padding: 4px 6px;
  border-radius: 4px; border: 1px solid #55637a; background: #fff; color: var(--ink); }
header button { background: #3b82f6; color: #fff; border-color: #3b82f6; cursor: pointer; }
#status { margin-left: auto; font-size: 12px; color: #c9d3e3; }
#status.error { color: #ffb4a8; }
main { padding: 14px 18px 30px; }
.scope { color: var(--muted); margin: 0 0 12px; }
.error-box { background: #fdecea; border: 1px solid #f5c2bd; padding: 10px 14px;
  border-radius: 6px; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px;
  margin-bottom: 14px; }
.tile { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 10px 12px; }
.tile .k { font-size: 12px; color: var(--muted); }
.tile .v { font-size: 22px; font-weight: 600; white-space: nowrap; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 14px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 10px 12px; overflow: hidden; }
.card h2 { font-size: 14px; margin: 0 0 6px; font-weight: 600; }
.card h3 { font-size: 12px; margin: 8px 0 2px; color: var(--muted); font-weight: 600; }
svg.chart { width: 100%; height: auto; display: block; }
svg .grid { stroke: var(--line); stroke-width: 1; }
svg .axis, svg .legend, svg .label, svg .value { font-size: 11px; fill: var(--muted); }
svg .label { fill: var(--ink); }
svg .empty { font-size: 13px; fill: var(--muted); }
svg .line { fill: none; stroke-width: 2; }
svg .c-attempts { fill: var(--attempts); stroke: var(--attempts); }
svg .c-answered { fill: var(--answered); stroke: var(--answered); }
svg .c-asr { fill: var(--asr); stroke: var(--asr); }
svg .c-revenue { fill: var(--revenue); stroke: var(--revenue); }
svg .c-cost { fill: var(--cost); stroke: var(--cost); }
svg .c-margin { fill: var(--margin); stroke: var(--margin); }
svg .c-risk { fill: var(--risk); stroke: var(--risk); }
svg polyline.line { fill: none; }
svg .bar-row:hover rect { opacity: 0.8; }
table.figures { border-collapse: collapse; width: 100%; font-size: 12px; margin-top: 6px; }
table.figures th, table.figures td { padding: 3px 6px; border-bottom: 1px solid var(--line);
  white-space: nowrap; }
table.figures th { text-align: left; color: var(--muted); font-weight: 600; }
table.figures td.n, table.figures th.n { text-align: right; font-variant-numeric: tabular-nums; }
.table-wrap { overflow-x: auto; }
.login { max-width: 420px; margin: 80px auto; background: var(--card); padding: 20px 24px;
  border: 1px solid var(--line); border-radius: 8px; }
.login input { width: 100%; padding: 6px; font: inherit; margin: 8px 0; }
"""

JS = """
(function () {
  "use strict";
  var body = document.body;
  var every = parseInt(body.getAttribute("data-refresh") || "0", 10);
  var status = document.getElementById("status");
  var refreshes = 0;
  body.setAttribute("data-js", "ready");

  function stamp(text, isError) {
    if (!status) { return; }
    status.textContent = text;
    status.className = isError ? "error" : "";
  }

  function reload() {
    if (document.hidden) { return; }
    var url = "panels" + window.location.search;
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.status === 401) { throw new Error("session expired: reload with the token"); }
        if (!response.ok) { throw new Error("refresh failed: HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        document.getElementById("panels").innerHTML = html;
        refreshes += 1;
        body.setAttribute("data-refreshes", String(refreshes));
        stamp("updated " + new Date().toISOString().slice(11, 19) + " UTC", false);
      })
      .catch(function (err) { stamp(err.message, true); });
  }

  if (every > 0) {
    stamp("auto-refresh every " + every + " s", false);
    window.setInterval(reload, every * 1000);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) { reload(); }
    });
  }
})();
"""
