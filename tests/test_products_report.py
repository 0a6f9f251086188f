"""The run report and its STAC catalog, on a real filter run; the page checked in headless Chromium."""
from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request

import numpy as np
import pystac
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from rasterio.warp import transform_bounds

from pipeline.elements import GridYearStatus
from pipeline.errors import UserError
from pipeline.io.summary import RunSummary
from pipeline.products.report import summary_records
from tests.conftest import shared_path
from tests.support.products import run_cli

APT_COMMAND = "apt-get update && apt-get install -y chromium"
CHART_RGB = (0xC0, 0x39, 0x2B)  # pipeline.products.report.TOTAL_COLOUR


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A real `filter` run on five Lourenço years, classify-type on its output, then `report`."""
    source = shared_path("mapbiomas_c6_lourenco")
    gpkg = shared_path("occurrences", "sigmine_amapa_2021.gpkg")
    base = tmp_path_factory.mktemp("run")
    run, class_id, out = base / "run", base / "class_id", base / "report"
    assert run_cli("filter", source, "--years", "2016-2020", "--output", run, "--quiet")[0] == 0
    code, _, err = run_cli("classify-type", run, "--occurrences", gpkg, "--layer", "sigmine_AP_2021_poly", "--output", class_id, "--quiet")
    assert code == 0, err
    code, stdout, err = run_cli("report", run, "--class-id", class_id, "--quicklook", "2016", "--quicklook", "2020", "--output", out)
    assert code == 0, err
    return run, class_id, out


def test_page_is_self_contained_and_complete(run_folder):
    run, class_id, out = run_folder
    page = (out / "report.html").read_text()
    # nothing is fetched: no script, no remote or relative resource, only inline SVG and data: images
    assert "<script" not in page
    sources = re.findall(r'\bsrc="([^"]+)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'<link[^>]+href="(?!data:)', page)
    assert page.count("<svg") == 2  # area chart, filter chart
    # quicklooks are real PNGs with a "before" and an "after" panel
    for s in sources:
        image = Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1])))
        assert image.format == "PNG" and image.width > 2 * image.height * 0.8
    assert "before the filters" in page and "after the filters" in page
    # a filter run records no exports: the legend says not mining plainly and shows no probability scale
    legend = re.search(r'<div class="legend" id="legend">(.*?)</div>', page).group(1)
    assert "shows through" not in legend and "probability" not in legend and "not observed" in legend
    # the run summary: every year with its status
    for year in range(2016, 2021):
        assert re.search(rf"<td>{year}</td><td class=\"status-written\">written</td>", page)
    # the filter table: input and the change of each stage, from areas.csv
    rows = list(csv.DictReader(open(run / "areas.csv")))
    first = rows[0]
    delta = float(first["mining_ha_spatial"]) - float(first["mining_ha_temporal"])
    assert f"{delta:,.2f}" in page
    # links to every COG, relative so the folder can move
    links = re.findall(r'<a href="([^"]+\.tif)"', page)
    assert len(links) == 10
    assert all((out / link).resolve().exists() for link in links)
    # area by type, from the class_id COGs: the 2020 total of the chart table
    (row,) = re.findall(r"<tr><td>2020</td><td>([\d,.]+)</td><td>([\d,.]+)</td><td>([\d,.]+)</td><td>([\d,.]+)</td></tr>", page)
    total, industrial, garimpo, unidentified = (float(v.replace(",", "")) for v in row)
    assert industrial > 0 and total == pytest.approx(industrial + garimpo + unidentified, abs=0.02)


def test_stac_collection_describes_every_cog(run_folder):
    run, class_id, out = run_folder
    collection = pystac.Collection.from_file(str(out / "stac" / "collection.json"))
    items = list(collection.get_items(recursive=True))
    assert len(items) == 10
    products = sorted(i.properties["mining_mapper:product"] for i in items)
    assert products == ["class_id"] * 5 + ["classification"] * 5
    for item in items:
        href = item.assets["data"].get_absolute_href()
        assert os.path.exists(href) and item.assets["data"].media_type.endswith("profile=cloud-optimized")
        with rasterio.open(href) as src:
            west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
            assert item.properties["proj:code"] == f"EPSG:{src.crs.to_epsg()}"
            assert item.properties["proj:shape"] == [src.height, src.width]
        assert item.bbox == pytest.approx([west, south, east, north], abs=1e-6)
        year = item.properties["mining_mapper:year"]
        assert item.common_metadata.start_datetime.year == year == item.common_metadata.end_datetime.year
    raw = json.loads((out / "stac" / "collection.json").read_text())
    assert all(not link["href"].startswith("/") for link in raw["links"])  # self-contained, relative


def test_summary_records_flatten_each_grid_year_and_other_shapes_are_refused(tmp_path):
    summary = RunSummary(command="run", output="/o", parameters={}, started="t0", finished="t1", grid_years=[
        GridYearStatus("1", 2020, "written", path="/o/1/1_2020.tif", mining_ha={"input": 3.0}),
        GridYearStatus("2", 2020, "failed", reason="corrupt"),
    ])
    assert summary_records(summary) == [
        {"grid": "1", "year": 2020, "status": "written", "path": "/o/1/1_2020.tif", "mining_ha.input": 3.0},
        {"grid": "2", "year": 2020, "status": "failed", "reason": "corrupt"},
    ]
    assert RunSummary.from_json(summary.to_json()).grid_years == summary.grid_years
    with pytest.raises(UserError, match="not a mining-mapper run summary"):
        RunSummary.from_json(b'{"grid_years": []}', "old/summary.json")


def test_report_errors_name_the_problem(run_folder, tmp_path):
    run, _, _ = run_folder
    code, _, err = run_cli("report", run, "--quicklook", "1999", "--output", tmp_path)
    assert code == 2 and str(run) in err and "no classification COG for year 1999" in err
    code, _, err = run_cli("report", tmp_path / "missing", "--output", tmp_path)
    assert code == 2 and "missing: no such file or folder" in err
    code, _, err = run_cli("report", run, "--max-quicklook-grids", "0", "--output", tmp_path)
    assert code == 2 and "--max-quicklook-grids 0: must be at least 1" in err


# --------------------------------------------------------------------------------------------------
# Headless Chromium through the DevTools protocol (offline: a local websocket)
# --------------------------------------------------------------------------------------------------
def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"headless Chromium is not installed (Debian: `{APT_COMMAND}`)")


def open_in_chromium(url: str, width: int = 1200, height: int = 1400, settle: float = 0.8, probe: str | None = None,
                     scroll_to: str | None = None) -> tuple[list, bytes, object]:
    """Load `url` in headless Chromium; return (console errors / warnings / exceptions / failed loads, screenshot
    PNG, the value of the JavaScript expression `probe`). `scroll_to`: an element id scrolled to the top first."""
    connect = pytest.importorskip("websockets.sync.client", reason="the DevTools client needs the 'websockets' package").connect
    profile = tempfile.mkdtemp(prefix="chromium-test-")
    process = subprocess.Popen(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    events: list[dict] = []
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.monotonic() + 60
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(open(port_file).read().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
        page = next(t for t in targets if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            counter = [0]

            def call(method, **params):
                counter[0] += 1
                ws.send(json.dumps({"id": counter[0], "method": method, "params": params}))
                while True:
                    message = json.loads(ws.recv(timeout=60))
                    if message.get("id") == counter[0]:
                        if "error" in message:
                            raise RuntimeError(f"{method}: {message['error']}")
                        return message.get("result", {})
                    events.append(message)

            for domain in ("Runtime", "Log", "Page", "Network"):
                call(f"{domain}.enable")
            call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
            call("Page.navigate", url=url)
            deadline = time.monotonic() + 60
            while not any(e.get("method") == "Page.loadEventFired" for e in events):
                events.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
            end = time.monotonic() + settle
            while time.monotonic() < end:
                try:
                    events.append(json.loads(ws.recv(timeout=0.1)))
                except TimeoutError:
                    pass
            value = call("Runtime.evaluate", expression=probe, returnByValue=True)["result"].get("value") if probe else None
            if scroll_to:
                call("Runtime.evaluate", expression=f"document.getElementById({json.dumps(scroll_to)}).scrollIntoView()")
                time.sleep(0.3)
            screenshot = base64.b64decode(call("Page.captureScreenshot", format="png")["data"])
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(profile, ignore_errors=True)
    problems = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            problems.append(("console", params["type"], [a.get("value", a.get("description")) for a in params.get("args", [])]))
        elif method == "Runtime.exceptionThrown":
            problems.append(("exception", params["exceptionDetails"].get("text")))
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            problems.append(("log", params["entry"]["level"], params["entry"]["text"]))
        elif method == "Network.loadingFailed":
            problems.append(("network", params.get("errorText")))
    return problems, screenshot, value


def _chart_pixels(png: bytes, rgb=CHART_RGB) -> int:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(rgb)).sum(axis=2) <= 6).sum())


def test_page_opens_in_chromium_without_console_errors_and_shows_the_chart(run_folder):
    _, _, out = run_folder
    problems, screenshot, _ = open_in_chromium((out / "report.html").resolve().as_uri())
    assert problems == []
    assert _chart_pixels(screenshot) > 500  # the total line of the area chart, drawn in its own colour


def test_the_chromium_check_catches_errors_and_missing_charts(tmp_path):
    """The checker itself: a page with a console error, an exception and a missing image, and no chart."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title><link rel="icon" href="data:,"></head>'
                   '<body><p>no chart</p><img src="missing.png"><script>console.error("boom"); nothere();</script></body></html>')
    problems, screenshot, _ = open_in_chromium(bad.resolve().as_uri())  # skips like the test above without Chromium
    kinds = {p[0] for p in problems}
    assert {"console", "exception", "network"} <= kinds
    assert _chart_pixels(screenshot) == 0


def test_quicklook_shows_the_probability_band(tmp_path):
    from pipeline.io import rasters as annual_rasters
    from pipeline.products.report import quicklook_png
    from tests.support.products import write_raster

    classes = np.zeros((50, 60), np.uint8)
    classes[10:20, 10:30] = 30
    probability = np.linspace(0, 255, 3000).reshape(50, 60).astype(np.uint8)
    path = write_raster(tmp_path / "7" / "7_2005.tif", np.stack([classes, probability]), nodata=255,
                        tags={"grid": "7", "year": 2005}, descriptions=["mining_classification", "mining_probability"])
    png, panels, mosaic = quicklook_png(annual_rasters.describe_raster(str(path)))
    assert not mosaic  # no exports given
    assert panels == ["probability of mining", "classes"]
    classes[:] = 0
    empty = write_raster(tmp_path / "7" / "7_2006.tif", np.stack([classes, probability]), nodata=255,
                         tags={"grid": "7", "year": 2006}, descriptions=["mining_classification", "mining_probability"])
    assert quicklook_png(annual_rasters.describe_raster(str(empty)))[1] == ["probability of mining", "classes (no mining)"]
    assert Image.open(io.BytesIO(png)).format == "PNG"
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # every figure closed: a report draws many quicklooks


def test_quicklook_reduction_keeps_every_mine():
    from pipeline.products.report import reduce_classes

    values = np.zeros((1000, 900), np.uint8)
    values[:, 800:] = 255
    values[123, 457] = 30  # one mining pixel
    reduced = reduce_classes(values, 30, 255, 100)
    assert reduced.shape == (100, 90)
    assert (reduced == 1).sum() == 1 and reduced[12, 45] == 1
    assert (reduced[:, 80:] == 255).all() and (reduced[:, :80][reduced[:, :80] != 1] == 0).all()


# --------------------------------------------------------------------------------------------------
# A pipeline-shaped run of two grids with its Earth Engine exports (no Beam: the COGs are written directly)
# --------------------------------------------------------------------------------------------------
def _pipeline_run(root):
    """Exports of grids 1010 and 1011 (tests.support.synthetic_run's layout), their COGs for 2000, 2003 and 2007
    (1011 with twice the mining and a shifted footprint; 1010 without mining in 2000) and a summary.json."""
    from affine import Affine

    from pipeline.elements import ExportGeometry
    from pipeline.io.cog import classes_to_output, encode_cog
    from pipeline.io.raw import encode_raw, raw_path
    from tests.support.synthetic_run import RES, truth_stack, write_exports

    stack = truth_stack()
    write_exports(root / "exports", stack, grids=("1010", "1011"))
    entries = []
    for grid, shift in (("1010", 0), ("1011", 1)):
        for index, year in ((0, 2000), (3, 2003), (7, 2007)):
            classes = stack[index].copy()
            if grid == "1010" and year == 2000:
                classes[classes == 1] = 0
            if grid == "1011":
                classes[:, ::2][classes[:, ::2] == 0] = 1
            probability = np.where(classes == 255, 255, np.where(classes == 1, 230, 20)).astype(np.uint8)
            transform = Affine(RES, 0, -54.0 + shift * 48 * RES, 0, -RES, -3.0)
            path = root / "run" / grid / f"{grid}_{year}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_cog([classes_to_output(classes), probability], "EPSG:4326", transform,
                                        {"grid": grid, "year": year}, ["mining_classification", "probability_x255"]))
            # As the pipeline does: the raw inference result under run/raw, re-used in 2000, inferred otherwise.
            fingerprint = "sha256:" + f"{grid}{year}".ljust(64, "0")
            geometry = ExportGeometry(grid, year, "EPSG:4326", tuple(transform)[:6], 16, 3, 6, 4)
            raw = raw_path(str(root / "run" / "raw"), grid, year)
            os.makedirs(os.path.dirname(raw), exist_ok=True)
            with open(raw, "wb") as handle:
                handle.write(encode_raw(geometry, probability, fingerprint))
            reused = year == 2000
            entries.append(GridYearStatus(grid, year, "written", path=str(path),
                                          mining_pixels={"input": 1, "gap_fill": 1, "temporal": 1, "spatial": 1, "frequency": 1},
                                          mining_ha={"input": 1.0, "gap_fill": 1.0, "temporal": 1.0, "spatial": 1.0, "frequency": 1.0},
                                          inference="reused" if reused else "inferred", fingerprint=fingerprint,
                                          inference_reason=None if reused else f"no raw result at {raw}"))
    summary = RunSummary(command="run", output=str(root / "run"), started="t0", finished="t1", grid_years=entries,
                         parameters={"exports": str(root / "exports"), "band_preset": "appendix"})
    (root / "run" / "summary.json").write_bytes(summary.to_json())
    return root / "run"


@pytest.fixture(scope="module")
def grids_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("grids")
    run = _pipeline_run(root)
    code, _, err = run_cli("report", run, "--output", root / "report")
    assert code == 0, err
    return root, (root / "report" / "report.html").read_text()


def test_every_grid_gets_a_line_a_column_and_quicklooks_over_the_mosaic(grids_report):
    root, page = grids_report
    assert "<th>grid 1010</th>" in page and "<th>grid 1011</th>" in page and "<th>mining ha, total</th>" in page
    # all grids (2 ≤ the default limit of 6), first and last year each; 1010 has no mining in 2000
    captions = re.findall(r"<figcaption>([^<]+)</figcaption>", page)
    assert [c.split(":")[0] for c in captions] == ["grid 1010, 2000", "grid 1010, 2007", "grid 1011, 2000", "grid 1011, 2007"]
    assert "classes (no mining)" in captions[0] and "(no mining)" not in captions[1]
    assert "First and last year of each of the 2 grids." in page
    assert 'id="legend"' in page and all(word in page for word in ("mining (any mining pixel", "not observed", "probability of mining 0"))
    assert "the false-colour mosaic (SWIR1, NIR, Red) shows through" in page and "over the input mosaic" not in page  # in the PNGs
    # readable column names, file names rather than paths
    assert "<th>mining ha, after gap fill</th>" in page and "<th>mining pixels, classified</th>" in page
    assert "<th>mining_ha.gap_fill</th>" not in page and "<td>1010_2000.tif</td>" in page


def test_quicklook_composite_is_the_exports_mosaic(tmp_path):
    """The composite's red channel is SWIR1: bright on mining (200), dark elsewhere (50); masked pixels are not observed."""
    from pipeline.products.composite import read_composite
    from tests.support.synthetic_run import COLS, PATCH, ROWS, truth_stack, write_exports

    stack = truth_stack()
    write_exports(tmp_path, stack)
    composite = read_composite(str(tmp_path), "1010", 2000, (ROWS * PATCH, COLS * PATCH), max_side=1000)
    assert composite.factor == 1 and composite.rgb.shape == (ROWS * PATCH, COLS * PATCH, 3)
    assert (composite.observed == (stack[0] != 255)).all()
    red = composite.rgb[..., 0]
    assert red[stack[0] == 1].min() > red[stack[0] == 0].max()
    reduced = read_composite(str(tmp_path), "1010", 2000, (ROWS * PATCH, COLS * PATCH), max_side=20)
    assert reduced.factor == 4 and reduced.rgb.shape == (8, 12, 3)  # 4 divides the 16-pixel patches
    assert read_composite(str(tmp_path), "1010", 1999, (32, 48)) is None  # no such export


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.sampled_from([1, 2, 4]), st.integers(0, 2**32 - 1))
def test_block_mean_equals_a_loop_over_blocks(rows, cols, factor, seed):
    from pipeline.products.composite import block_mean

    rng = np.random.default_rng(seed)
    values = rng.random((rows * factor, cols * factor, 3))
    observed = rng.random((rows * factor, cols * factor)) < 0.6
    means, seen = block_mean(values, observed, factor)
    for r in range(rows):
        for c in range(cols):
            block = (slice(r * factor, (r + 1) * factor), slice(c * factor, (c + 1) * factor))
            assert seen[r, c] == observed[block].any()
            expected = values[block][observed[block]].mean(axis=0) if observed[block].any() else np.zeros(3)
            assert np.allclose(means[r, c], expected)


def test_percent_change_only_when_the_first_year_is_large_enough():
    from pipeline.products.report import meaningful_percent
    from pipeline.products.stats import compare_first_last

    assert meaningful_percent(compare_first_last({1985: 55_000.0, 2023: 440_000.0})) == 700.0
    assert meaningful_percent(compare_first_last({2016: 0.5, 2023: 529.0})) is None  # the "+105,734 %" case
    assert meaningful_percent(compare_first_last({2016: 12.0, 2023: 1_000.0})) is None  # 1.2 % of the last year
    assert meaningful_percent(compare_first_last({2016: 50.0, 2023: 1_000.0})) == 1900.0  # exactly 5 %
    assert meaningful_percent(compare_first_last({2016: 100.0, 2023: 40.0})) == -60.0
    assert meaningful_percent(compare_first_last({2016: 0.0, 2023: 40.0})) is None


def test_default_quicklooks_are_all_grids_up_to_a_limit():
    from pipeline.io import rasters as annual_rasters
    from pipeline.products.report import choose_quicklooks

    refs = [annual_rasters.RasterRef(f"{g}_{y}.tif", y, g, {}) for g in ("3", "1", "2") for y in (2001, 2000, 2005)]
    wanted, note = choose_quicklooks(refs, {"2": {2000: 9.0}, "3": {2000: 5.0}, "1": {2000: 1.0}}, limit=2)
    assert wanted == [("2", 2000), ("2", 2005), ("3", 2000), ("3", 2005)] and "2 of the run's 3 grids" in note
    wanted, _ = choose_quicklooks(refs, {}, limit=6)
    assert [g for g, _ in wanted] == ["1", "1", "2", "2", "3", "3"]
    single = [annual_rasters.RasterRef(f"mining_{y}.tif", y, None, {}) for y in (2020, 2016)]
    assert choose_quicklooks(single, {}, limit=6) == ([(None, 2016), (None, 2020)], "First and last year of the run.")


def test_readable_columns():
    from pipeline.products.report import readable_column

    assert [readable_column(c) for c in ("grid", "path", "mining_ha.input", "mining_ha.frequency", "mining_pixels.temporal",
                                         "reason", "something_else.x")] == [
        "grid", "COG", "mining ha, classified", "mining ha, after frequency", "mining pixels, after temporal", "why",
        "something else · x"]


def test_multi_grid_page_in_chromium_shows_grid_lines_and_the_legend(grids_report):
    from pipeline.products.report import GRID_COLOURS, LEGEND

    root, _ = grids_report
    probe = ("[document.getElementById('legend').innerText, "
             "Math.max(...[...document.querySelectorAll('.scroll')].map(d => d.scrollWidth - d.clientWidth))]")
    problems, screenshot, (legend, overflow) = open_in_chromium((root / "report" / "report.html").resolve().as_uri(), probe=probe)
    assert problems == []
    for colour in GRID_COLOURS[:2]:  # one line per grid, beside the total
        assert _chart_pixels(screenshot, tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))) > 150, colour
    assert _chart_pixels(screenshot) > 300
    for label in ("mining", "not mining", "not observed", "probability of mining"):
        assert label in legend
    assert overflow > 0  # the wide run-summary table scrolls inside its box instead of widening the page
    _, quicklooks, _ = open_in_chromium((root / "report" / "report.html").resolve().as_uri(), scroll_to="quicklooks")
    mining_rgb = tuple(round(255 * v) for v in LEGEND["mining"][1][:3])
    assert _chart_pixels(quicklooks, mining_rgb) > 200  # mining drawn (and its legend swatch) in the legend's colour


def test_report_shows_inferred_and_reused_and_leaves_raw_results_out(grids_report):
    """A pipeline run keeps raw inference results under {output}/raw: the report counts how each grid-year's
    probabilities were obtained and does not mistake a raw result for a classification COG."""
    root, page = grids_report
    assert len(list((root / "run" / "raw").rglob("*.tif"))) == 6
    assert re.search(r'id="inference-totals">Inference: <b>4</b> grid-year\(s\) inferred, <b>2</b> re-used', page)
    assert "<th>inference</th>" in page and "<th>raw result fingerprint</th>" in page and "<th>why inferred</th>" in page
    assert "<td>reused</td>" in page and "<td>sha256:101020030000…</td>" in page
    assert page.count(">1010_2000.tif<") == 2  # the summary table and the outputs list: the raw result is not a product
