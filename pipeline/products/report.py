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
from pipeline.io.summary import RunSummary
from pipeline.io import rasters as annual_rasters
from pipeline.io.cog import MINING_TYPE_COLOURS
from pipeline.products.composite import Composite, block_factor, read_composite
from pipeline.products.stac import product_of

TOTAL_COLOUR = "#c0392b"
TYPE_COLOURS = MINING_TYPE_COLOURS
STAGE_COLOURS = {"input": "#555555", "gap_fill": "#1b9e77", "temporal": "#7570b3", "spatial": "#e7298a", "frequency": "#c0392b"}


@dataclasses.dataclass
class RunContents:
    """What a run folder holds, as found."""

    root: str
    classification: list[annual_rasters.RasterRef]
    class_id: list[annual_rasters.RasterRef]
    others: list[annual_rasters.RasterRef]
    summary: RunSummary | None
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
    summary = RunSummary.from_json(fs.read_bytes(summary_path), summary_path) if fs.exists(summary_path) else None
    areas_path = fs.join(root, "areas.csv")
    filter_areas = read_filter_areas(areas_path) if fs.exists(areas_path) else pipeline_filter_areas(summary)
    return RunContents(root, classification, class_id, others, summary, filter_areas)


def pipeline_filter_areas(summary: RunSummary | None) -> list[dict] | None:
    """Per-year hectares after each filter stage, summed over grids, from the run's summary.json.

    `run` and `filter` record `mining_ha` per stage for every written grid-year; years with nothing
    written are left out. None without a summary or without any such record.
    """
    if summary is None:
        return None
    by_year: dict[int, dict[str, float]] = {}
    for entry in summary.grid_years:
        if not entry.mining_ha:
            continue
        totals = by_year.setdefault(entry.year, {})
        for stage, hectares in entry.mining_ha.items():
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


def _pyplot():
    """matplotlib's pyplot, headless (Agg) and with deterministic SVG ids."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "mining-mapper"
    return plt


def _figure(width: float = 9.0, height: float = 3.8):
    return _pyplot().subplots(figsize=(width, height))


GRID_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22")
MAX_GRID_LINES = len(GRID_COLOURS)  # more grids than this: the rest drawn thin and grey, unlabelled


def grid_colour(rank: int) -> str:
    """The line colour of the grid at `rank` (grids ranked as `per_grid_series` orders them)."""
    return GRID_COLOURS[rank] if rank < MAX_GRID_LINES else "#b0b0b0"


def per_grid_series(rasters) -> dict[str, dict[int, float]]:
    """grid → {year: mining ha of that grid's own raster}, grids in order of their largest yearly area.

    From `AreaStatistics.rasters` of classification COGs; runs without grids (one series) give {}.
    """
    series: dict[str, dict[int, float]] = {}
    for r in rasters:
        if r.grid:
            series.setdefault(r.grid, {})[r.year] = series.get(r.grid, {}).get(r.year, 0.0) + r.mining_ha
    return dict(sorted(series.items(), key=lambda item: (-max(item[1].values()), item[0])))


def area_chart_svg(
    totals: Mapping[int, float],
    by_type: Mapping[int, Mapping[str, float]] | None = None,
    per_grid: Mapping[str, Mapping[int, float]] | None = None,
) -> str:
    """Inline SVG: mining hectares per year: the total, one line per grid (when several), and stacked areas
    by mining type when known."""
    fig, ax = _figure()
    years = sorted(totals)
    if per_grid and len(per_grid) > 1:
        for rank, (grid, series) in enumerate(per_grid.items()):
            grid_years = sorted(series)
            labelled = rank < MAX_GRID_LINES
            ax.plot(grid_years, [series[y] for y in grid_years], color=grid_colour(rank),
                    linewidth=1.6 if labelled else 0.8, marker="o" if labelled else None, markersize=2.5,
                    label=f"grid {grid}" if labelled else None, zorder=2 if labelled else 1)
        if len(per_grid) > MAX_GRID_LINES:
            ax.plot([], [], color=grid_colour(MAX_GRID_LINES), linewidth=0.8, label=f"{len(per_grid) - MAX_GRID_LINES} other grids")
    if by_type:
        type_years = sorted(by_type)
        bottom = np.zeros(len(type_years))
        for name, colour in TYPE_COLOURS.items():
            values = np.array([by_type[y].get(name, 0.0) for y in type_years])
            if values.any():
                ax.fill_between(type_years, bottom, bottom + values, step=None, color=colour, alpha=0.55, label=name, linewidth=0)
                bottom = bottom + values
    ax.plot(years, [totals[y] for y in years], color=TOTAL_COLOUR, linewidth=2.5, marker="o", markersize=3.5, label="total", zorder=3)
    ax.set_xlabel("year")
    ax.set_ylabel("mining area (ha)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    ax.set_title("Mining area per year")
    return _svg(fig)


def filter_chart_svg(rows: Sequence[Mapping[str, float]]) -> str:
    """Inline SVG: mining hectares per year after each filter stage."""
    fig, ax = _figure(9.0, 3.4)
    years = [r["year"] for r in rows]
    stages = [k for k in rows[0] if k != "year"]
    for stage in stages:
        ax.plot(years, [r[stage] for r in rows], label=STAGE_NAMES.get(stage, stage), color=STAGE_COLOURS.get(stage), linewidth=1.6)
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


def reduce_classes(values: np.ndarray, mining_value: int, nodata, max_side: int, factor: int | None = None) -> np.ndarray:
    """A quicklook of a class map at most `max_side` pixels wide (or reduced by `factor`): 1 where any pixel
    of a block is mining, 0 where the block is observed and not mining, 255 where nothing in it is observed
    (small mines stay visible)."""
    factor = factor or block_factor(values.shape, max_side)
    observed = np.ones(values.shape, bool) if nodata is None else values != nodata
    mining = observed & (values == mining_value)
    out = np.full((-(-values.shape[0] // factor), -(-values.shape[1] // factor)), 255, np.uint8)
    out[_block_view(observed, factor, False).any(axis=2)] = 0
    out[_block_view(mining, factor, False).any(axis=2)] = 1
    return out


def reduce_probability(values: np.ndarray, max_side: int, factor: int | None = None) -> np.ndarray:
    """Block maximum of a uint8 probability band (p × 255; 255 = not observed) as floats 0–1, NaN where not observed."""
    factor = factor or block_factor(values.shape, max_side)
    blocks = _block_view(values, factor, 255)
    observed = blocks != 255
    peak = np.where(observed, blocks, 0).max(axis=2).astype(float) / 255.0
    peak[~observed.any(axis=2)] = np.nan
    return peak


def _read_band(path: str, band: int) -> tuple[np.ndarray, float | None]:
    with annual_rasters.open_raster(path) as src:
        return src.read(band), src.nodata


def _class_image(reduced: np.ndarray, composite: Composite | None = None) -> np.ndarray:
    """RGBA of reduced classes: mining opaque, not observed grey, not mining the imagery (or pale without it)."""
    rgba = np.zeros(reduced.shape + (4,))
    if composite is not None:
        rgba[..., :3] = composite.rgb[: reduced.shape[0], : reduced.shape[1]]
        rgba[..., 3] = 1.0
        rgba[~composite.observed[: reduced.shape[0], : reduced.shape[1]]] = LEGEND["not observed"][1]
    else:
        rgba[...] = LEGEND["not mining"][1]
    rgba[reduced == 255] = LEGEND["not observed"][1]
    rgba[reduced == 1] = LEGEND["mining"][1]
    return rgba


# What the quicklooks show, in the figure's legend and the page's: label → (description, RGBA).
LEGEND = {
    "mining": ("mining (any mining pixel in the block)", (1.0, 0.84, 0.0, 1.0)),
    "not mining": ("not mining: the false-colour mosaic (SWIR1, NIR, Red) shows through", (0.93, 0.93, 0.91, 1.0)),
    "not observed": ("not observed (no valid mosaic pixel)", (0.45, 0.45, 0.45, 1.0)),
}
PROBABILITY_CMAP = "magma"


def _extent_and_labels(bounds, crs) -> tuple[list[float], str, str, str]:
    """imshow extent (left, right, bottom, top) in the raster's CRS, axis labels, and the CRS name."""
    extent = [bounds.left, bounds.right, bounds.bottom, bounds.top]
    if crs is not None and crs.is_geographic:
        return extent, "longitude (°)", "latitude (°)", crs.to_string()
    unit = "m" if crs is not None and crs.linear_units in ("metre", "meter") else (crs.linear_units if crs else "pixels")
    return extent, f"x ({unit})", f"y ({unit})", crs.to_string() if crs else "no CRS"


def quicklook_png(
    ref: annual_rasters.RasterRef,
    before: str | None = None,
    before_class_value: int = 30,
    mining_value: int = 30,
    max_side: int = 500,
    exports: str | None = None,
) -> tuple[bytes, list[str], bool]:
    """PNG panels of one grid-year: probability (when the COG has that band), classes before and after the
    filters, the classes drawn over a false-colour composite of the input mosaic when `exports` (the run's
    exports root) holds this grid-year, with map coordinates, a legend, and "no mining" on empty panels.

    The chosen grid-year is read whole (one band at a time) and reduced by blocks so that no mining
    pixel disappears from the picture.

    Returns the PNG, the panel titles (for the caption; a class panel without mining says so) and whether
    the input mosaic was drawn.
    """
    from matplotlib.patches import Patch

    plt = _pyplot()
    with annual_rasters.open_raster(ref.path) as src:  # one open of the grid-year for all it gives
        shape = src.shape
        composite = read_composite(exports, ref.grid, ref.year, shape, max_side) if exports and ref.grid else None
        factor = composite.factor if composite is not None else block_factor(shape, max_side)
        extent, xlabel, ylabel, crs_name = _extent_and_labels(src.bounds, src.crs)
        panels = []
        probability = [i for i, d in enumerate(src.descriptions) if "prob" in (d or "").lower()]
        if probability:
            panels.append(("probability of mining", reduce_probability(src.read(probability[0] + 1), max_side, factor), None))
        if before:
            values, nodata = _read_band(before, 1)
            panels.append(("before the filters", reduce_classes(values, before_class_value, nodata, max_side, factor), "classes"))
        panels.append(("after the filters" if before else "classes",
                       reduce_classes(src.read(1), mining_value, src.nodata, max_side, factor), "classes"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.6), squeeze=False)
    for ax, (title, image, kind) in zip(axes[0], panels):
        if kind is None:
            cmap = plt.get_cmap(PROBABILITY_CMAP).with_extremes(bad=LEGEND["not observed"][1])
            shown = ax.imshow(image, cmap=cmap, vmin=0, vmax=1, interpolation="nearest", extent=extent)
            bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
            bar.set_label("probability of mining (0–1)")
        else:
            ax.imshow(_class_image(image, composite), interpolation="nearest", extent=extent)
            if not (image == 1).any():
                ax.text(0.5, 0.5, "no mining", transform=ax.transAxes, ha="center", va="center", fontsize=13,
                        bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "#999999"})
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.locator_params(nbins=4)
    names = {"not mining": "not mining (the mosaic shows through)" if composite is not None else "not mining"}
    handles = [Patch(facecolor=rgba, edgecolor="#666666", label=names.get(label, label)) for label, (_, rgba) in LEGEND.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9, bbox_to_anchor=(0.5, -0.02))
    label = f"grid {ref.grid}, {ref.year}" if ref.grid else str(ref.year)
    imagery = "over the input mosaic (SWIR1/NIR/Red)" if composite is not None else "no input mosaic (exports not found)"
    fig.suptitle(f"{label} · {crs_name} · {imagery}", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    titles = [title + (" (no mining)" if kind and not (image == 1).any() else "") for title, image, kind in panels]
    return buffer.getvalue(), titles, composite is not None


# ----------------------------------------------------------------------------------------------
# Figures and words
# ----------------------------------------------------------------------------------------------
MIN_BASE_HA = 10.0  # a percent change needs a first year of at least this many hectares …
MIN_BASE_SHARE = 0.05  # … and at least this share of the last year's area (changes up to +1,900 %)


def meaningful_percent(comparison: Mapping) -> float | None:
    """The first-to-last percent change, or None when the first year is too small for it to mean anything.

    A handful of hectares in the first year turns any growth into "+105,734 %"; the hectares change is
    shown always, the percentage only when the first year holds at least MIN_BASE_HA hectares and at
    least MIN_BASE_SHARE of the last year's area.
    """
    first, last, change = comparison.get("first_ha"), comparison.get("last_ha"), comparison.get("change_percent")
    if change is None or first is None or first < MIN_BASE_HA or first < MIN_BASE_SHARE * (last or 0.0):
        return None
    return change


STAGE_NAMES = {"input": "classified", "gap_fill": "gap fill", "temporal": "temporal", "spatial": "spatial", "frequency": "frequency"}
COLUMN_NAMES = {"path": "COG", "output": "COG", "reason": "why", "status": "status", "grid": "grid", "year": "year",
                "inference": "inference", "fingerprint": "raw result fingerprint", "inference_reason": "why inferred"}


def short_fingerprint(fingerprint: str) -> str:
    """A raw result's fingerprint as a table shows it: the hash's first 12 hex digits (enough to tell runs apart)."""
    kind, _, digest = str(fingerprint).partition(":")
    return f"{kind}:{digest[:12]}…" if digest else str(fingerprint)


def readable_column(name: str) -> str:
    """A summary.json column (flattened, dotted) as a person reads it: 'mining_ha.gap_fill' → 'mining ha, after gap fill'."""
    if name in COLUMN_NAMES:
        return COLUMN_NAMES[name]
    head, _, stage = name.partition(".")
    what = {"mining_ha": "mining ha", "mining_pixels": "mining pixels"}.get(head)
    if what and stage in STAGE_NAMES:
        return f"{what}, {STAGE_NAMES[stage]}" if stage == "input" else f"{what}, after {STAGE_NAMES[stage]}"
    return name.replace("_", " ").replace(".", " · ")


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


def summary_records(summary: RunSummary) -> list[dict]:
    """Rows (one per grid-year) of a run's summary, nested values flattened into dotted columns."""
    return [_flatten(entry.to_record()) for entry in summary.grid_years]


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
    return f'<div class="scroll"><table class="{css}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


# ----------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------
STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:1.5rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.meta{color:#666;font-size:.9rem}.scroll{overflow:auto;max-width:100%;max-height:30rem;margin:.5rem 0}
table{border-collapse:collapse;font-size:.85rem}
th,td{border:1px solid #ddd;padding:.2rem .5rem;text-align:right;white-space:nowrap}th{background:#f4f4f4;position:sticky;top:0}
td:first-child,th:first-child{text-align:left}.status-written,.status-ok,.status-done{color:#1a7f37}
.status-failed,.status-error,.status-missing{color:#c0392b;font-weight:bold}.status-skipped{color:#9a6700}
figure{margin:0}.chart svg{max-width:100%;height:auto}img.quicklook{max-width:100%;border:1px solid #eee}
.kpi{display:inline-block;margin-right:2rem}.kpi b{font-size:1.3rem;display:block}
.legend{display:flex;flex-wrap:wrap;gap:.4rem 1.4rem;align-items:center;font-size:.9rem;margin:.4rem 0}
.legend span{display:inline-flex;align-items:center;gap:.4rem}.swatch{width:1.1rem;height:1.1rem;border:1px solid #666;display:inline-block}
.ramp{width:9rem;height:.9rem;border:1px solid #666;display:inline-block}
"""


def render_report(
    contents: RunContents,
    output_dir: str,
    totals: Mapping[int, float],
    comparison: Mapping,
    by_type: Mapping[int, Mapping[str, float]] | None,
    quicklooks: Sequence[tuple[str, bytes, bool]],
    stac_href: str | None,
    title: str = "Mining mapper run report",
    per_grid: Mapping[str, Mapping[int, float]] | None = None,
    quicklook_note: str | None = None,
) -> str:
    """The HTML page (a string): every figure and image inline, links relative to `output_dir`.

    `per_grid` (grid → year → ha, from `per_grid_series`) adds one line per grid to the area chart and one
    column per grid to its table; `quicklook_note` says which grid-years the quicklooks show and why.
    """
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
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
        change = meaningful_percent(comparison)
        note = "" if change is not None or comparison.get("change_percent") is None else (
            f'<span class="meta" id="no-percent"> (no percentage: {comparison["first_year"]} holds too little '
            f"mining for one to mean anything)</span>")
        parts.append(
            '<div class="kpis">'
            f'<span class="kpi">{comparison["first_year"]}<b>{comparison["first_ha"]:,.1f} ha</b></span>'
            f'<span class="kpi">{comparison["last_year"]}<b>{comparison["last_ha"]:,.1f} ha</b></span>'
            f'<span class="kpi">change<b>{comparison["change_ha"]:+,.1f} ha'
            + (f" ({change:+.1f} %)" if change is not None else "")
            + f"</b></span>{note}</div>"
        )
    grids = list(per_grid or {}) if per_grid and len(per_grid) > 1 else []
    parts.append(f'<figure class="chart" id="area-chart">{area_chart_svg(totals, by_type, per_grid)}</figure>')
    columns = ["year", "mining ha, total"] + [f"grid {g}" for g in grids] + ([f"{t} ha" for t in TYPE_COLOURS] if by_type else [])
    rows = [[y, totals[y], *[per_grid[g].get(y) for g in grids],
             *([(by_type.get(y) or {}).get(t, 0.0) for t in TYPE_COLOURS] if by_type else [])] for y in sorted(totals)]
    parts.append(_table(columns, rows))
    parts.append(
        '<p class="meta">Hectares from true pixel areas. The total counts each place once where grids overlap '
        "(in the grid whose centre is nearest); a grid's own line and column count its whole raster.</p>"
    )

    parts.append("<h2>Run summary</h2>")
    records = summary_records(contents.summary) if contents.summary is not None else []
    if records:
        columns = list(dict.fromkeys(k for r in records for k in r))
        shown = [[fs.basename(str(r[c])) if c in ("path", "output") and r.get(c) else
                  short_fingerprint(r[c]) if c == "fingerprint" and r.get(c) else r.get(c) for c in columns] for r in records]
        inference = contents.summary.inference_counts
        if any(inference.values()):
            parts.append(f'<p id="inference-totals">Inference: <b>{inference["inferred"]}</b> grid-year(s) inferred, '
                         f'<b>{inference["reused"]}</b> re-used from their raw results (same fingerprint: model, band preset, '
                         "export, inference precision).</p>")
        parts.append(_table([readable_column(c) for c in columns], shown))
    elif contents.summary is None:
        parts.append("<p>No summary.json in the run folder.</p>")
    else:
        parts.append("<p>summary.json holds no per grid-year records.</p>")

    parts.append("<h2>What each filter changed</h2>")
    if contents.filter_areas:
        rows_in = contents.filter_areas
        stages = [k for k in rows_in[0] if k != "year"]
        parts.append(f'<figure class="chart" id="filter-chart">{filter_chart_svg(rows_in)}</figure>')
        names = [STAGE_NAMES.get(stage, stage) for stage in stages]
        columns = ["year", f"{names[0]} (ha)", *[f"change by {n} (ha)" for n in names[1:]], f"after {names[-1]} (ha)"]
        rows = [[r["year"], r[stages[0]], *[r[b] - r[a] for a, b in zip(stages, stages[1:])], r[stages[-1]]] for r in rows_in]
        parts.append(_table(columns, rows))
    else:
        parts.append("<p>No areas.csv (written by the filter command) in the run folder.</p>")

    parts.append('<h2 id="quicklooks">Quicklooks</h2>')
    if quicklook_note:
        parts.append(f'<p class="meta">{html.escape(quicklook_note)}</p>')
    if quicklooks:
        parts.append(legend_html(mosaic=any(q[2] for q in quicklooks), probability=any("probability" in q[0] for q in quicklooks)))
        for caption, png, _ in quicklooks:
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img class="quicklook" alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    else:
        parts.append("<p>No grid-year chosen.</p>")

    parts.append("<h2>Outputs</h2>")
    if stac_href:
        parts.append(f'<p>STAC collection: <a href="{html.escape(stac_href)}">{html.escape(stac_href)}</a></p>')
    all_refs = [*contents.classification, *contents.class_id, *contents.others]
    rows = []
    for ref in all_refs:
        href = fs.relative_href(ref.path, output_dir)
        rows.append([product_of(ref.tags), ref.grid or "", ref.year, RawHtml(f'<a href="{html.escape(href)}">{html.escape(fs.basename(ref.path))}</a>')])
    parts.append(_table(["product", "grid", "year", "COG"], rows))
    parts.append("</body></html>")
    return "\n".join(parts)


def legend_html(mosaic: bool = True, probability: bool = True) -> str:
    """The quicklooks' legend as HTML (the same colours as the figures'): the classes, and the probability
    scale when a probability panel is drawn; 'not mining' says whether the mosaic shows through."""
    import matplotlib

    def css(rgba) -> str:
        return "#%02x%02x%02x" % tuple(round(255 * v) for v in rgba[:3])

    texts = {label: text for label, (text, _) in LEGEND.items()}
    if not mosaic:
        texts["not mining"] = "not mining"
    items = [f'<span><i class="swatch" style="background:{css(rgba)}"></i>{html.escape(texts[label])}</span>'
             for label, (_, rgba) in LEGEND.items()]
    if probability:
        cmap = matplotlib.colormaps[PROBABILITY_CMAP]
        stops = ",".join(css(cmap(v / 4)) for v in range(5))
        items.append(f'<span>probability of mining 0 <i class="ramp" style="background:linear-gradient(to right,{stops})"></i> 1</span>')
    return '<div class="legend" id="legend">' + "".join(items) + "</div>"


def choose_quicklooks(refs: Sequence[annual_rasters.RasterRef], per_grid: Mapping[str, Mapping[int, float]], limit: int) -> tuple[list[tuple], str]:
    """Which (grid, year)s to draw by default: the first and last year of every grid, up to `limit` grids.

    With more grids than the limit, those with the most mining (largest yearly area) are drawn. Returns
    the choice and a sentence for the page saying what was chosen.
    """
    years_of: dict = {}
    for ref in refs:
        years_of.setdefault(ref.grid, set()).add(ref.year)
    grids = sorted(years_of, key=lambda g: (g is not None, g or ""))
    if len(grids) > limit:
        ranked = [g for g in per_grid if g in years_of] + [g for g in grids if g not in per_grid]
        chosen = sorted(ranked[:limit], key=lambda g: g or "")
        note = (f"First and last year of {limit} of the run's {len(grids)} grids: those with the most mining "
                f"(--max-quicklook-grids {limit}; --quicklook GRID:YEAR picks others).")
    else:
        chosen = grids
        note = (f"First and last year of {'each of the ' + str(len(grids)) + ' grids' if len(grids) > 1 else 'the run'}.")
    wanted = []
    for grid in chosen:
        years = sorted(years_of[grid])
        wanted += list(dict.fromkeys([(grid, years[0]), (grid, years[-1])]))
    return wanted, note


def run_exports(summary: RunSummary | None, override: str | None = None) -> str | None:
    """The exports root the run read (its summary's 'exports'), or `override`; None when unknown.

    The composite needs SWIR1, NIR and Red; every band preset has them (checked against the recorded preset).
    """
    from pipeline.contract import BAND_PRESETS
    from pipeline.products.composite import COMPOSITE_BANDS

    if override:
        return override
    if summary is None or not summary.parameters.get("exports"):
        return None
    bands = BAND_PRESETS.get(str(summary.parameters.get("band_preset", "appendix")), ())
    if not set(COMPOSITE_BANDS) <= set(bands):
        return None
    return fs.local_or_remote(str(summary.parameters["exports"]))


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
    if contents.summary is not None:
        for year, path in contents.summary.inputs.items():
            found[(None, int(year))] = fs.local_or_remote(path)
    return found
