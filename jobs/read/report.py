"""The run report: one self-contained HTML page per enrich run, ``<lake>/_reports/<run_id>.html``.

    catalog-enrich report [--lake DIR] [--run-id ID] [--image-root DIR]

The page is what an operator opens after a nightly run and an analyst forwards: products per category,
confidence histograms, attribute coverage, duplicate clusters with their images side by side, adult flags
with their reasons, quarantine reasons, stage timings and the change against the previous run. It is built
from the Delta tables (aggregated in DuckDB, so a catalog of millions costs a few group-bys) and the run
summary (``<run_id>.json``, else the ``enrichment_runs`` row). Charts are inline SVG and images ``data:`` URIs,
so the file can be mailed or archived and opens without network access. Every section has a stable ``id``
(:data:`SECTIONS`) for links and tests; a section whose table is missing or empty says so. Seller text is
HTML-escaped everywhere: titles are untrusted input.

The tables are read at their newest versions when the report is written (right after the run for the job's
own report); the header lists the versions read. Quarantine rows are filtered by run id.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs.lake.damage import DamagedLakeError, reading
from jobs.runtime.exits import fail
from models.core.errors import EXIT_UNUSABLE, CatalogEnrichError

__all__ = ["SECTIONS", "build_report", "main", "write_run_report"]

log = logging.getLogger(__name__)

# Section id -> heading. The ids are part of the page's interface (links, tests): keep them stable.
SECTIONS: dict[str, str] = {
    "run": "Run",
    "categories": "Products per category",
    "confidence": "Confidence histograms",
    "attributes": "Attribute coverage",
    "clusters": "Duplicate cluster sizes",
    "duplicates": "Sample duplicate clusters",
    "adult": "Adult flags",
    "quarantine": "Quarantine reasons",
    "timings": "Timings per stage",
    "changes": "Change against the previous run",
}

_E = html.escape
# The enrich job's stages in the order they run (the summary JSON stores timings sorted by name).
_STAGE_ORDER = ("validate", "select changed", "embed", "heads", "attributes", "commit", "match", "index")


# -- charts ---------------------------------------------------------------------------------------------------
def hbar_chart(items: list[tuple[str, float]], unit: str = "", width: int = 720, label_width: int = 300) -> str:
    """Horizontal bars, one per (label, value), as inline SVG."""
    if not items:
        return ""
    row, top = 20, 4
    vmax = max(v for _, v in items) or 1
    bar_w = width - label_width - 90
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{top + row * len(items) + 4}" role="img">']
    for i, (label, v) in enumerate(items):
        y = top + i * row
        w = max(1.0, bar_w * v / vmax) if v else 0
        short = label if len(label) <= 44 else label[:42] + "..."
        value = f"{v:,.2f}" if isinstance(v, float) and not float(v).is_integer() else f"{int(v):,}"
        parts.append(f'<g><title>{_E(label)}: {value}{_E(unit)}</title>'
                     f'<text x="{label_width - 6}" y="{y + 14}" text-anchor="end">{_E(short)}</text>'
                     f'<rect x="{label_width}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" class="bar"/>'
                     f'<text x="{label_width + w + 4:.1f}" y="{y + 14}">{value}{_E(unit)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def histogram(counts: list[int], title: str, lo: float = 0.0, hi: float = 1.0) -> str:
    """Vertical bars over equal bins of [lo, hi], as inline SVG with the axis ends and the count."""
    width, height, pad = 300, 150, 22
    n, cmax = len(counts), max(counts) or 1
    bw = (width - 2 * pad) / n
    parts = [f'<figure class="hist"><svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" role="img">']
    for i, c in enumerate(counts):
        h = (height - 2 * pad) * c / cmax
        a, b = lo + (hi - lo) * i / n, lo + (hi - lo) * (i + 1) / n
        parts.append(f'<rect x="{pad + i * bw:.1f}" y="{height - pad - h:.1f}" width="{bw - 1:.1f}" '
                     f'height="{h:.1f}" class="bar"><title>[{a:.2f}, {b:.2f}): {c:,}</title></rect>')
    parts.append(f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" class="axis"/>'
                 f'<text x="{pad}" y="{height - 6}">{lo:g}</text>'
                 f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle">{(lo + hi) / 2:g}</text>'
                 f'<text x="{width - pad}" y="{height - 6}" text-anchor="end">{hi:g}</text>'
                 f'<text x="{pad}" y="14">max bin {cmax:,}</text></svg>'
                 f'<figcaption>{_E(title)} ({sum(counts):,} values)</figcaption></figure>')
    return "".join(parts)


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return ""
    columns = columns or list(rows[0])
    head = "".join(f"<th>{_E(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_E(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if v == v else "NaN"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def _empty(text: str) -> str:
    return f'<p class="empty">{_E(text)}</p>'


# -- data -----------------------------------------------------------------------------------------------------
class _Lake:
    """The lake's tables in DuckDB, with what a section needs to say when one is missing or empty."""

    def __init__(self, lake: Path):
        from deltalake import DeltaTable

        from jobs.read.query import _open, _tables

        self.root = lake
        # A damaged table is left out; the sections that read it say so, with the repair (jobs.lake.damage).
        self.con, self.damaged, self.sources = _open(lake, latest=True)
        self.paths = _tables(lake)
        self.versions = {n: DeltaTable(str(p)).version() for n, p in self.paths.items() if n not in self.damaged}

    def rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        import duckdb

        from jobs.read.query import damage_of

        try:
            cur = self.con.execute(sql, params or [])
        except duckdb.Error as e:
            damage = damage_of(e, self.damaged, self.sources)
            if damage is not None:
                raise damage from e
            raise
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def missing(self, table: str) -> str | None:
        """Why ``table`` has nothing to show, or None when it has rows."""
        if table not in self.paths:
            return f"No {table} table in this lake yet: the stage that writes it has not run."
        if not self.rows(f"SELECT 1 FROM {table} LIMIT 1"):
            return f"{table} is empty."
        return None

    def hist(self, table: str, column: str, where: str = "TRUE", bins: int = 20) -> list[int]:
        got = self.rows(f"SELECT least(floor({column} * {bins}), {bins - 1})::INT AS b, count(*) AS n "
                        f"FROM {table} WHERE {column} IS NOT NULL AND {where} GROUP BY 1")
        counts = [0] * bins
        for r in got:
            counts[max(0, min(bins - 1, r["b"]))] += r["n"]
        return counts


def _run_info(lake: Path, run_id: str) -> dict[str, Any]:
    """The run summary JSON the job wrote, else its enrichment_runs row."""
    from jobs.lake.runlog import run_rows

    path = lake / "_reports" / f"{run_id}.json"
    with reading(lake / "enrichment_runs", "enrichment_runs"):
        row = (run_rows(lake, "enrichment_runs", [run_id]) or [{}])[0]
    info = json.loads(path.read_text()) if path.exists() else {}
    if not info and not row:
        raise ValueError(f"no run {run_id!r} in {lake}: neither {path.name} nor an enrichment_runs row")
    info.setdefault("run_id", run_id)
    for key in ("status", "model_version", "counts", "timings", "message"):
        if not info.get(key) and row.get(key):
            info[key] = row[key]
    info["catalog"], info["started_at"] = row.get("catalog"), row.get("started_at")
    return info


def _previous_run(lake: Path, run_id: str, started_at) -> dict[str, Any] | None:
    from deltalake import DeltaTable

    from jobs.lake.runlog import _plain

    path = lake / "enrichment_runs"
    if started_at is None or not DeltaTable.is_deltatable(str(path)):
        return None
    runs = [{k: _plain(v) for k, v in r.items()} for r in DeltaTable(str(path)).to_pyarrow_table().to_pylist()]
    earlier = [r for r in runs if r["run_id"] != run_id and r["status"] == "succeeded" and r["started_at"]
               and r["started_at"] < started_at]
    return max(earlier, key=lambda r: r["started_at"]) if earlier else None


def _latest_run_id(lake: Path) -> str:
    reports = sorted((lake / "_reports").glob("*.json"), key=lambda p: p.stat().st_mtime)
    if reports:
        return reports[-1].stem
    from deltalake import DeltaTable

    path = lake / "enrichment_runs"
    if DeltaTable.is_deltatable(str(path)):
        runs = DeltaTable(str(path)).to_pandas(columns=["run_id", "started_at"]).sort_values("started_at")
        if len(runs):
            return str(runs["run_id"].iloc[-1])
    raise ValueError(f"no enrich run recorded in {lake}: run the enrich job first, or pass --lake")


# -- sections -------------------------------------------------------------------------------------------------
def _sec_run(db: _Lake, info: dict[str, Any], ctx: dict[str, Any]) -> str:
    c = info.get("counts") or {}
    facts = [("status", info.get("status")), ("model", info.get("model_description") or info.get("model_version")),
             ("catalog", info.get("catalog")), ("started", info.get("started_at")),
             ("rows", f"read {c.get('read', '?')} = enriched {c.get('enriched', '?')} + unchanged "
                      f"{c.get('unchanged', '?')} + quarantined {c.get('quarantined', '?')}"),
             ("message", info.get("message")),
             ("table versions read", ", ".join(f"{n} v{v}" for n, v in sorted(db.versions.items())))]
    return "<dl>" + "".join(f"<dt>{_E(k)}</dt><dd>{_E(_fmt(v))}</dd>" for k, v in facts) + "</dl>"


def _sec_categories(db: _Lake, info, ctx) -> str:
    if why := db.missing("product_categories"):
        return _empty(why)
    rows = db.rows("SELECT category, count(*) AS products FROM product_categories GROUP BY 1 "
                   "ORDER BY products DESC, category")
    top, rest = rows[:30], rows[30:]
    methods = db.rows("SELECT method, count(*) AS products FROM product_categories GROUP BY 1 ORDER BY 2 DESC")
    out = hbar_chart([(str(r["category"]), r["products"]) for r in top])
    if rest:
        out += _empty(f"... and {len(rest)} more categories with {sum(r['products'] for r in rest):,} products.")
    return out + "<h3>Method</h3>" + _table(methods)


def _sec_confidence(db: _Lake, info, ctx) -> str:
    specs = [("product_categories", "confidence", "TRUE", "category confidence (top-1)"),
             ("product_attributes", "confidence", "TRUE", "attribute value confidence"),
             ("product_adult_flags", "score", "TRUE", "adult score"),
             ("product_matches", "score", "TRUE", "duplicate match score")]
    figs, notes = [], []
    for table, col, where, title in specs:
        why = db.missing(table)
        if why:
            notes.append(_empty(why))
        else:
            figs.append(histogram(db.hist(table, col, where), title))
    return '<div class="row">' + "".join(figs) + "</div>" + "".join(notes)


def _sec_attributes(db: _Lake, info, ctx) -> str:
    if why := db.missing("product_attributes"):
        return _empty(why)
    total = db.rows("SELECT count(*) AS n FROM product_embeddings")[0]["n"] if "product_embeddings" in db.paths else 0
    rows = db.rows("""
        WITH v AS (SELECT attribute, value, count(*) AS n,
                          row_number() OVER (PARTITION BY attribute ORDER BY count(*) DESC, value) AS r
                   FROM product_attributes GROUP BY 1, 2)
        SELECT a.attribute, a.products, a.method, (SELECT string_agg(value || ' (' || n || ')', ', ' ORDER BY r)
                                                 FROM v WHERE v.attribute = a.attribute AND r <= 3) AS top_values
        FROM (SELECT attribute, count(DISTINCT product_id) AS products,
                     string_agg(DISTINCT split_part(method, ':', 1), '+') AS method
              FROM product_attributes GROUP BY 1) a
        ORDER BY a.products DESC, a.attribute""")
    for r in rows:
        r["coverage"] = f"{100 * r['products'] / total:.1f}%" if total else ""
    chart = hbar_chart([(f"{r['attribute']} ({r['method']})", 100 * r["products"] / max(total, 1))
                        for r in rows[:30]], unit="%")
    return (f"<p>Share of the {total:,} embedded products with a value per attribute.</p>" + chart
            + _table(rows[:60], ["attribute", "method", "products", "coverage", "top_values"]))


def _sec_clusters(db: _Lake, info, ctx) -> str:
    if why := db.missing("product_clusters"):
        return _empty(why)
    rows = db.rows("SELECT cluster_size, count(DISTINCT cluster_id) AS clusters, count(*) AS products "
                   "FROM product_clusters GROUP BY 1 ORDER BY 1")
    dup = [r for r in rows if r["cluster_size"] >= 2]
    singles = sum(r["products"] for r in rows if r["cluster_size"] < 2)
    guards = db.rows("SELECT guard, count(*) AS products FROM product_clusters WHERE guard IS NOT NULL GROUP BY 1")
    out = (f"<p>{sum(r['clusters'] for r in dup):,} duplicate clusters holding {sum(r['products'] for r in dup):,} "
           f"products; {singles:,} products without a duplicate.</p>")
    out += hbar_chart([(f"size {r['cluster_size']}", r["clusters"]) for r in dup], unit=" clusters") or _empty(
        "No duplicate cluster: every product is alone.")
    return out + ("<h3>Oversized components cut by the guard</h3>" + _table(guards) if guards else "")


def _product_cards(ids: list[str], details: dict[str, dict], image_root: str | None, images: bool) -> str:
    from jobs.read.lookup import thumbnail_data_uri

    cards = []
    for pid in ids:
        d = details.get(pid, {})
        uri = thumbnail_data_uri(d.get("image_uri"), image_root) if images else None
        img = (f'<img src="{uri}" alt="{_E(pid)}" width="96" height="96">' if uri
               else '<div class="noimg">no image</div>')
        cards.append(f'<div class="card">{img}<div class="pid">{_E(pid)}</div>'
                     f'<div class="title">{_E(str(d.get("title") or ""))}</div></div>')
    return '<div class="cards">' + "".join(cards) + "</div>"


def _sec_duplicates(db: _Lake, info, ctx) -> str:
    if why := db.missing("product_clusters"):
        return _empty(why)
    from jobs.read.lookup import product_details

    clusters = db.rows("SELECT cluster_id, any_value(cluster_size) AS size, list(product_id ORDER BY product_id) "
                       "AS members FROM product_clusters WHERE cluster_size >= 2 GROUP BY 1 "
                       "ORDER BY size DESC, cluster_id LIMIT 8")
    if not clusters:
        return _empty("No duplicate cluster to show.")
    ids = [p for c in clusters for p in c["members"][:8]]
    details = {r["product_id"]: r for r in product_details(ctx["catalog"], ids).to_dict("records")}
    out = []
    for c in clusters:
        more = f" (first 8 of {c['size']})" if c["size"] > 8 else ""
        out.append(f'<div class="cluster"><h3>cluster {_E(str(c["cluster_id"]))}: {c["size"]} products{more}</h3>'
                   + _product_cards(c["members"][:8], details, ctx["image_root"], True) + "</div>")
    return "".join(out)


def _sec_adult(db: _Lake, info, ctx) -> str:
    if why := db.missing("product_adult_flags"):
        return _empty(why)
    from jobs.read.lookup import product_details

    n = db.rows("SELECT count(*) AS products, count(*) FILTER (WHERE is_adult) AS flagged FROM product_adult_flags")[0]
    kinds = db.rows("SELECT split_part(r, ':', 1) AS signal, count(*) AS products FROM "
                    "(SELECT unnest(reasons) AS r FROM product_adult_flags WHERE is_adult) GROUP BY 1 ORDER BY 2 DESC")
    flagged = db.rows("SELECT product_id, score, reasons FROM product_adult_flags WHERE is_adult "
                      "ORDER BY score DESC, product_id LIMIT 25")
    titles = product_details(ctx["catalog"], [r["product_id"] for r in flagged]).set_index("product_id")["title"]
    for r in flagged:
        r["title"] = titles.get(r["product_id"])
    out = f"<p>{n['flagged']:,} of {n['products']:,} products flagged adult.</p>"
    if not flagged:
        return out + _empty("No product is flagged adult.")
    # No thumbnails here on purpose: the page is shared widely and these images may be explicit.
    return (out + "<h3>Signals that fired</h3>" + hbar_chart([(r["signal"], r["products"]) for r in kinds])
            + "<h3>Flagged products (highest score first)</h3>"
            + _table(flagged, ["product_id", "score", "reasons", "title"]))


def _sec_quarantine(db: _Lake, info, ctx) -> str:
    if why := db.missing("quarantine"):
        return _empty(why)
    rid = info["run_id"]
    reasons = db.rows("SELECT reason_code, count(*) AS rows FROM quarantine WHERE run_id = ? GROUP BY 1 "
                      "ORDER BY 2 DESC, 1", [rid])
    if not reasons:
        return _empty(f"This run quarantined no row (quarantine holds no row of run {rid}).")
    examples = db.rows("SELECT product_id, reason_code, detail FROM quarantine WHERE run_id = ? "
                       "ORDER BY reason_code, product_id NULLS FIRST LIMIT 20", [rid])
    return (hbar_chart([(r["reason_code"], r["rows"]) for r in reasons], unit=" rows")
            + "<h3>Examples</h3>" + _table(examples))


def _sec_timings(db: _Lake, info, ctx) -> str:
    timings = dict(info.get("timings") or {})
    total = timings.pop("total", None)
    if not timings:
        return _empty("The run recorded no stage timings.")
    order = {name: i for i, name in enumerate(_STAGE_ORDER)}
    stages = sorted(timings.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    out = hbar_chart([(k, float(v)) for k, v in stages], unit=" s")
    return out + (f"<p>Total {float(total):,.1f} s.</p>" if total is not None else "")


def _sec_changes(db: _Lake, info, ctx) -> str:
    prev = _previous_run(db.root, info["run_id"], info.get("started_at"))
    if prev is None:
        return _empty("No earlier succeeded run in enrichment_runs: nothing to compare with.")
    rows = []
    for kind, now, before in (("count", info.get("counts") or {}, prev.get("counts") or {}),
                              ("seconds", info.get("timings") or {}, prev.get("timings") or {})):
        for key in sorted(set(now) | set(before)):
            a, b = now.get(key), before.get(key)
            delta = (a - b) if a is not None and b is not None else None
            rows.append({"measure": f"{key} ({kind})", "this run": a, "previous run": b, "change": delta})
    model = ("same model" if prev.get("model_version") == info.get("model_version")
             else f"model changed from {prev.get('model_version')}")
    return (f"<p>Previous run: {_E(prev['run_id'])} ({_E(str(prev.get('started_at')))}), {_E(model)}.</p>"
            + _table(rows))


_BUILDERS: dict[str, Callable[[_Lake, dict[str, Any], dict[str, Any]], str]] = {
    "run": _sec_run, "categories": _sec_categories, "confidence": _sec_confidence, "attributes": _sec_attributes,
    "clusters": _sec_clusters, "duplicates": _sec_duplicates, "adult": _sec_adult, "quarantine": _sec_quarantine,
    "timings": _sec_timings, "changes": _sec_changes,
}

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 2em 3em;color:#222;max-width:1200px}
nav{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ddd}
nav a{margin-right:1em}section{margin-top:1.5em}h2{border-bottom:2px solid #4a7;padding-bottom:.2em}
.chart text{font:11px sans-serif;fill:#333}.bar{fill:#4a7}.axis{stroke:#999}
.row{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}figcaption{font-size:12px;color:#555}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;
vertical-align:top}th{background:#f4f4f4}.empty{color:#777;font-style:italic}dt{font-weight:bold}dd{margin:0 0 .4em 1em}
.cards{display:flex;flex-wrap:wrap;gap:8px}.card{width:120px;font-size:11px}.card img,.noimg{width:96px;height:96px;
display:block;border:1px solid #ccc}.noimg{background:#eee;color:#777;text-align:center;line-height:96px}
.pid{font-weight:bold}img[data-decoded="0"]{outline:3px solid #c33}
"""

# Marks each image that failed to decode (a red outline, data-decoded="0"); the browser test reads the marks.
_SCRIPT = """window.addEventListener('load', function () {
  document.querySelectorAll('img').forEach(function (im) {
    im.setAttribute('data-decoded', im.complete && im.naturalWidth > 0 ? '1' : '0'); });
  document.body.setAttribute('data-loaded', '1'); });"""


def build_report(lake: str | Path, run_id: str | None = None, image_root: str | None = None) -> tuple[str, str]:
    """``(run_id, html)`` of the report of ``run_id`` (default: the latest run)."""
    root = Path(lake)
    if not root.is_dir():
        raise ValueError(f"lake {lake} does not exist (run the enrich job first, or pass --lake)")
    run_id = run_id or _latest_run_id(root)
    info = _run_info(root, run_id)
    db = _Lake(root)
    catalog = info.get("catalog")
    if image_root is None and catalog:
        image_root = str(Path(catalog).resolve().parent)   # the enrich job's default --image-root
    ctx = {"catalog": catalog, "image_root": image_root}
    sections = []
    for sid, heading in SECTIONS.items():
        try:
            body = _BUILDERS[sid](db, info, ctx)
        except DamagedLakeError as e:  # the line says it all: no traceback
            log.warning("report section %s: %s", sid, e)
            body = _empty(f"This section could not be built: {e}")
        except Exception as e:  # one broken section must not cost the operator the whole page
            log.exception("report section %s failed", sid)
            body = _empty(f"This section could not be built: {type(e).__name__}: {e}")
        sections.append(f'<section id="{sid}"><h2>{_E(heading)}</h2>{body}</section>')
    nav = "".join(f'<a href="#{sid}">{_E(h)}</a>' for sid, h in SECTIONS.items())
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>catalog-enrich run {_E(run_id)}'
            f'</title><meta name="viewport" content="width=device-width"><style>{_CSS}</style></head><body>'
            f'<h1>catalog-enrich run {_E(run_id)}</h1><p>{_E(str(info.get("status")))}; report written {now} from '
            f'{_E(str(root.resolve()))}</p><nav>{nav}</nav>{"".join(sections)}<script>{_SCRIPT}</script>'
            f"</body></html>")
    return run_id, page


def write_report(lake: str | Path, run_id: str | None = None, image_root: str | None = None) -> Path:
    from jobs.lake.runlog import check_run_id

    run_id, page = build_report(lake, None if run_id is None else check_run_id(run_id), image_root)
    path = Path(lake) / "_reports" / f"{run_id}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def write_run_report(lake: str | Path, run_id: str, image_root: str | None = None) -> Path | None:
    """The enrich job's report step: the tables are committed by now, so a report that cannot be written is
    logged (``catalog-enrich report`` writes it again), not a failed run."""
    try:
        path = write_report(lake, run_id, image_root)
    except Exception:
        log.exception("could not write the HTML report of run %s", run_id)
        return None
    log.info("run report %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="catalog-enrich report", description=__doc__.split("\n\n")[0])
    p.add_argument("--lake", default="lake", help="folder of the Delta tables (default: ./lake)")
    p.add_argument("--run-id", default=None, help="the run to report on (default: the latest)")
    p.add_argument("--image-root", default=None, help="folder relative image URIs resolve against (default: the "
                                                      "catalog's folder, as in the enrich job)")
    args = p.parse_args(argv)
    try:
        path = write_report(args.lake, args.run_id, args.image_root)
    except CatalogEnrichError as e:   # no such run (2), a damaged lake (4)
        return fail(e)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
