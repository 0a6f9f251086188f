"""One self-contained HTML page per run: areas, run summary, filter effects, quicklooks, COG links.

Everything the page shows is inside it: charts are inline SVG (matplotlib), quicklooks base64 PNG,
styles inline, no script and no remote resource, so it opens offline and from a bucket alike. It reads
a run folder: the classification COGs (the pipeline's ``{grid}/{grid}_{year}.tif`` or the `filter`
command's ``mining_{year}.tif``), its ``summary.json`` and ``areas.csv`` when present, and optionally
the class_id COGs of `classify-type` (for the area by mining type).
"""
from __future__ import annotations

import base64
import csv
import dataclasses
import datetime as dt
import html
import io
import re
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline import __version__
from pipeline.errors import UserError
from pipeline.io import filesystem as fs
from pipeline.io import rasters as annual_rasters
from pipeline.products.stac import product_of

TOTAL_COLOUR = "#c0392b"
TYPE_COLOURS = {"industrial": "#2c7fb8", "garimpo": "#e6a800", "unidentified": "#8c8c8c"}
STAGE_COLOURS = {"input": "#555555", "gap_fill": "#1b9e77", "temporal": "#7570b3", "spatial": "#e7298a", "frequency": "#c0392b"}
QUICKLOOK_COLOURS = {0: (0.90, 0.90, 0.88), 1: (0.75, 0.10, 0.10)}


@dataclasses.dataclass
class RunContents:
    """What a run folder holds, as found."""

    root: str
    classification: list[annual_rasters.RasterRef]
    class_id: list[annual_rasters.RasterRef]
    others: list[annual_rasters.RasterRef]
    summary: object | None
    filter_areas: list[dict] | None


def scan_run(root: str, class_id_dirs: Sequence[str] = (), product_dirs: Sequence[str] = ()) -> RunContents:
    """Find the COGs of a run (by their 'product' tag), its summary.json and the filter's areas.csv."""
    refs = annual_rasters.discover([root])
    classification = [r for r in refs if product_of(r.tags) == "classification"]
    class_id = [r for r in refs if product_of(r.tags) == "class_id"]
    others = [r for r in refs if product_of(r.tags) not in ("classification", "class_id")]
    for folder in class_id_dirs:
        found = annual_rasters.discover([folder])
        class_id += [r for r in found if product_of(r.tags) == "class_id"]
        others += [r for r in found if product_of(r.tags) != "class_id"]
    for folder in product_dirs:
        others += annual_rasters.discover([folder])
    if not classification:
        raise UserError(f"{root}: holds no classification COG (a raster without a 'product' tag)")
    summary_path = fs.join(root, "summary.json")
    summary = fs.read_json(summary_path) if fs.exists(summary_path) else None
    areas_path = fs.join(root, "areas.csv")
    filter_areas = read_filter_areas(areas_path) if fs.exists(areas_path) else pipeline_filter_areas(summary)
    return RunContents(root, classification, class_id, others, summary, filter_areas)


def pipeline_filter_areas(summary: object) -> list[dict] | None:
    """Per-year hectares after each filter stage, summed over grids, from the pipeline's summary.json.

    The pipeline records `mining_ha` per stage for every written grid-year; years with nothing
    written are left out. None when the summary has no such records (e.g. an older run).
    """
    if not isinstance(summary, Mapping) or not isinstance(summary.get("grid_years"), list):
        return None
    by_year: dict[int, dict[str, float]] = {}
    for entry in summary["grid_years"]:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("mining_ha"), Mapping):
            continue
        totals = by_year.setdefault(int(entry["year"]), {})
        for stage, hectares in entry["mining_ha"].items():
            totals[stage] = totals.get(stage, 0.0) + float(hectares)
    if not by_year:
        return None
    return [{"year": year, **stages} for year, stages in sorted(by_year.items())]


def read_filter_areas(path: str) -> list[dict]:
    """The filter command's areas.csv: year and mining hectares after each stage (input, gap_fill, … frequency)."""
    text = fs.read_bytes(path).decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or "year" not in rows[0]:
        raise UserError(f"{path}: expected a 'year' column and mining_ha_<stage> columns")
    stages = [c[len("mining_ha_"):] for c in rows[0] if c.startswith("mining_ha_")]
    if not stages:
        raise UserError(f"{path}: no mining_ha_<stage> column")
    out = []
    for number, row in enumerate(rows, start=2):
        try:
            out.append({"year": int(row["year"]), **{s: float(row[f"mining_ha_{s}"]) for s in stages}})
        except (TypeError, ValueError):
            raise UserError(f"{path}: line {number} is not a year and numbers ({row})") from None
    return out


# ----------------------------------------------------------------------------------------------
# Charts and images
# ----------------------------------------------------------------------------------------------
def _svg(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _figure(width: float = 9.0, height: float = 3.8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "mining-mapper"
    return plt.subplots(figsize=(width, height))


def area_chart_svg(totals: Mapping[int, float], by_type: Mapping[int, Mapping[str, float]] | None = None) -> str:
    """Inline SVG: mining hectares per year (total line, and stacked areas by mining type when known)."""
    fig, ax = _figure()
    years = sorted(totals)
    if by_type:
        type_years = sorted(by_type)
        bottom = np.zeros(len(type_years))
        for name, colour in TYPE_COLOURS.items():
            values = np.array([by_type[y].get(name, 0.0) for y in type_years])
            if values.any():
                ax.fill_between(type_years, bottom, bottom + values, step=None, color=colour, alpha=0.55, label=name, linewidth=0)
                bottom = bottom + values
    ax.plot(years, [totals[y] for y in years], color=TOTAL_COLOUR, linewidth=2.5, marker="o", markersize=3.5, label="total")
    ax.set_xlabel("year")
    ax.set_ylabel("mining area (ha)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", frameon=False)
    ax.set_title("Mining area per year")
    return _svg(fig)


def filter_chart_svg(rows: Sequence[Mapping[str, float]]) -> str:
    """Inline SVG: mining hectares per year after each filter stage."""
    fig, ax = _figure(9.0, 3.4)
    years = [r["year"] for r in rows]
    stages = [k for k in rows[0] if k != "year"]
    for stage in stages:
        ax.plot(years, [r[stage] for r in rows], label=stage, color=STAGE_COLOURS.get(stage), linewidth=1.6)
    ax.set_xlabel("year")
    ax.set_ylabel("mining area (ha)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", frameon=False, ncol=len(stages))
    ax.set_title("Mining area after each filter stage")
    return _svg(fig)


def _block_view(values: np.ndarray, factor: int, fill) -> np.ndarray:
    """(rows/f, cols/f, f*f) blocks of an array, padded with `fill` to whole blocks."""
    rows, cols = values.shape
    padded = np.full((-(-rows // factor) * factor, -(-cols // factor) * factor), fill, dtype=values.dtype)
    padded[:rows, :cols] = values
    r, c = padded.shape[0] // factor, padded.shape[1] // factor
    return padded.reshape(r, factor, c, factor).swapaxes(1, 2).reshape(r, c, factor * factor)


def reduce_classes(values: np.ndarray, mining_value: int, nodata, max_side: int) -> np.ndarray:
    """A quicklook of a class map at most `max_side` pixels wide: 1 where any pixel of a block is mining,
    0 where the block is observed and not mining, 255 where nothing in it is observed (small mines stay visible)."""
    factor = max(1, -(-max(values.shape) // max_side))
    observed = np.ones(values.shape, bool) if nodata is None else values != nodata
    mining = observed & (values == mining_value)
    out = np.full((-(-values.shape[0] // factor), -(-values.shape[1] // factor)), 255, np.uint8)
    out[_block_view(observed, factor, False).any(axis=2)] = 0
    out[_block_view(mining, factor, False).any(axis=2)] = 1
    return out


def reduce_probability(values: np.ndarray, max_side: int) -> np.ndarray:
    """Block maximum of a uint8 probability band (p × 255; 255 = not observed) as floats 0–1, NaN where not observed."""
    factor = max(1, -(-max(values.shape) // max_side))
    blocks = _block_view(values, factor, 255)
    observed = blocks != 255
    peak = np.where(observed, blocks, 0).max(axis=2).astype(float) / 255.0
    peak[~observed.any(axis=2)] = np.nan
    return peak


def _read_band(path: str, band: int) -> tuple[np.ndarray, float | None]:
    with annual_rasters.open_raster(path) as src:
        return src.read(band), src.nodata


def _class_image(reduced: np.ndarray) -> np.ndarray:
    rgb = np.ones(reduced.shape + (3,))
    rgb[reduced == 0] = QUICKLOOK_COLOURS[0]
    rgb[reduced == 1] = QUICKLOOK_COLOURS[1]
    return rgb


def quicklook_png(
    ref: annual_rasters.RasterRef, before: str | None = None, before_class_value: int = 30, mining_value: int = 30, max_side: int = 500
) -> tuple[bytes, list[str]]:
    """PNG panels of one grid-year: probability (when the COG has that band), classes before and after the filters.

    The chosen grid-year is read whole (one band at a time) and reduced by blocks so that no mining
    pixel disappears from the picture.

    Returns the PNG and the panel titles (for the caption).
    """
    import matplotlib.pyplot as plt

    panels = []
    with annual_rasters.open_raster(ref.path) as src:
        descriptions = [(d or "").lower() for d in src.descriptions]
    probability = [i for i, d in enumerate(descriptions) if "prob" in d]
    if probability:
        values, _ = _read_band(ref.path, probability[0] + 1)
        panels.append(("probability of mining", reduce_probability(values, max_side), "prob"))
    if before:
        values, nodata = _read_band(before, 1)
        panels.append(("before the filters", _class_image(reduce_classes(values, before_class_value, nodata, max_side)), "rgb"))
    values, nodata = _read_band(ref.path, 1)
    panels.append(("after the filters" if before else "classes", _class_image(reduce_classes(values, mining_value, nodata, max_side)), "rgb"))
    _figure()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), squeeze=False)
    for ax, (title, image, kind) in zip(axes[0], panels):
        if kind == "prob":
            shown = ax.imshow(image, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        else:
            ax.imshow(image, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    label = f"grid {ref.grid}, {ref.year}" if ref.grid else str(ref.year)
    fig.suptitle(label)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue(), [title for title, _, _ in panels]


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------
def _flatten(record: Mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = ", ".join(map(str, value))
        else:
            flat[name] = value
    return flat


def summary_records(summary: object) -> list[dict]:
    """Rows (one per grid-year) from a run's summary.json, whatever its shape.

    Accepts a list of records; an object holding such a list (e.g. 'grid_years', 'items'); or an
    object holding a mapping of keys to records (the filter command's 'years': {year: {...}}),
    the key becoming the first column. Nested values are flattened into dotted columns.
    """
    if isinstance(summary, list):
        return [_flatten(r) for r in summary if isinstance(r, Mapping)]
    if not isinstance(summary, Mapping):
        return []
    if isinstance(summary.get("grid_years"), list):  # the pipeline's own summary
        return [_flatten(r) for r in summary["grid_years"] if isinstance(r, Mapping)]
    for value in summary.values():
        if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            return [_flatten(r) for r in value]
    for key, value in summary.items():
        if isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
            label = key[:-1] if key.endswith("s") else key
            return [{label: k, **_flatten(v)} for k, v in value.items()]
    return []


class RawHtml(str):
    """Markup made by this module (a link), inserted into a table cell unescaped."""


def _table(columns: Sequence[str], rows: Sequence[Sequence], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for value in row:
            text = value if isinstance(value, RawHtml) else f"{value:,.2f}" if isinstance(value, float) else str(value if value is not None else "")
            status = f' class="status-{re.sub(r"[^a-z]", "", text.lower())}"' if text.lower() in ("written", "ok", "done", "failed", "error", "skipped", "missing") else ""
            cells.append(f"<td{status}>{text if isinstance(value, RawHtml) else html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


# ----------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------
STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:1.5rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.meta{color:#666;font-size:.9rem}table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0;display:block;overflow-x:auto;max-height:30rem}
th,td{border:1px solid #ddd;padding:.2rem .5rem;text-align:right;white-space:nowrap}th{background:#f4f4f4;position:sticky;top:0}
td:first-child,th:first-child{text-align:left}.status-written,.status-ok,.status-done{color:#1a7f37}
.status-failed,.status-error,.status-missing{color:#c0392b;font-weight:bold}.status-skipped{color:#9a6700}
figure{margin:0}.chart svg{max-width:100%;height:auto}img.quicklook{max-width:100%;border:1px solid #eee}
.kpi{display:inline-block;margin-right:2rem}.kpi b{font-size:1.3rem;display:block}
"""


def render_report(
    contents: RunContents,
    output_dir: str,
    totals: Mapping[int, float],
    comparison: Mapping,
    by_type: Mapping[int, Mapping[str, float]] | None,
    quicklooks: Sequence[tuple[str, bytes]],
    stac_href: str | None,
    title: str = "Mining mapper run report",
) -> str:
    """The HTML page (a string): every figure and image inline, links relative to `output_dir`."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>",
        '<link rel="icon" href="data:,">',
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">Run folder <code>{html.escape(str(contents.root))}</code> · generated {now} by mining-mapper {__version__}</p>',
        "<h2>Mining area per year</h2>",
    ]
    if comparison:
        change = comparison.get("change_percent")
        parts.append(
            '<div class="kpis">'
            f'<span class="kpi">{comparison["first_year"]}<b>{comparison["first_ha"]:,.1f} ha</b></span>'
            f'<span class="kpi">{comparison["last_year"]}<b>{comparison["last_ha"]:,.1f} ha</b></span>'
            f'<span class="kpi">change<b>{comparison["change_ha"]:+,.1f} ha'
            + (f" ({change:+.1f} %)" if change is not None else "")
            + "</b></span></div>"
        )
    parts.append(f'<figure class="chart" id="area-chart">{area_chart_svg(totals, by_type)}</figure>')
    columns = ["year", "mining (ha)"] + ([*TYPE_COLOURS] if by_type else [])
    rows = [[y, totals[y], *([(by_type.get(y) or {}).get(t, 0.0) for t in TYPE_COLOURS] if by_type else [])] for y in sorted(totals)]
    parts.append(_table(columns, rows))
    parts.append(
        '<p class="meta">Hectares from true pixel areas; where grids overlap, each place is counted once '
        "(in the grid whose centre is nearest).</p>"
    )

    parts.append("<h2>Run summary</h2>")
    records = summary_records(contents.summary) if contents.summary is not None else []
    if records:
        columns = list(dict.fromkeys(k for r in records for k in r))
        parts.append(_table(columns, [[r.get(c) for c in columns] for r in records]))
    elif contents.summary is None:
        parts.append("<p>No summary.json in the run folder.</p>")
    else:
        parts.append("<p>summary.json holds no per grid-year records.</p>")

    parts.append("<h2>What each filter changed</h2>")
    if contents.filter_areas:
        rows_in = contents.filter_areas
        stages = [k for k in rows_in[0] if k != "year"]
        parts.append(f'<figure class="chart" id="filter-chart">{filter_chart_svg(rows_in)}</figure>')
        columns = ["year", f"{stages[0]} (ha)", *[f"Δ {s} (ha)" for s in stages[1:]], f"{stages[-1]} (ha)"]
        rows = [[r["year"], r[stages[0]], *[r[b] - r[a] for a, b in zip(stages, stages[1:])], r[stages[-1]]] for r in rows_in]
        parts.append(_table(columns, rows))
    else:
        parts.append("<p>No areas.csv (written by the filter command) in the run folder.</p>")

    parts.append("<h2>Quicklooks</h2>")
    if quicklooks:
        for caption, png in quicklooks:
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img class="quicklook" alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    else:
        parts.append("<p>No grid-year chosen.</p>")

    parts.append("<h2>Outputs</h2>")
    if stac_href:
        parts.append(f'<p>STAC catalog: <a href="{html.escape(stac_href)}">{html.escape(stac_href)}</a></p>')
    all_refs = [*contents.classification, *contents.class_id, *contents.others]
    rows = []
    for ref in all_refs:
        href = fs.relative_href(ref.path, output_dir)
        rows.append([product_of(ref.tags), ref.grid or "", ref.year, RawHtml(f'<a href="{html.escape(href)}">{html.escape(fs.basename(ref.path))}</a>')])
    parts.append(_table(["product", "grid", "year", "COG"], rows))
    parts.append("</body></html>")
    return "\n".join(parts)


def parse_quicklook(text: str) -> tuple[str | None, int]:
    """'GRID:YEAR' or 'YEAR' → (grid or None, year)."""
    grid, _, year = text.rpartition(":")
    try:
        return (grid or None), int(year)
    except ValueError:
        raise UserError(f"--quicklook {text!r}: expected GRID:YEAR or YEAR") from None


def before_paths(contents: RunContents, before_dir: str | None) -> dict[tuple, str]:
    """(grid, year) → the raster before the filters: from --before, else the filter command's summary 'inputs'."""
    found: dict[tuple, str] = {}
    if before_dir:
        for ref in annual_rasters.discover([before_dir]):
            found[(ref.grid, ref.year)] = ref.path
        return found
    if isinstance(contents.summary, Mapping) and isinstance(contents.summary.get("inputs"), Mapping):
        for year, path in contents.summary["inputs"].items():
            try:
                found[(None, int(year))] = str(path)
            except ValueError:
                continue
    return found
