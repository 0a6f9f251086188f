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
from PIL import Image
from rasterio.warp import transform_bounds

from pipeline.products.report import summary_records
from tests.conftest import shared_path
from tests.products_support import run_cli

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


def test_summary_records_of_other_shapes():
    listing = {"run": "x", "grid_years": [{"grid": "1", "year": 2020, "status": "ok", "areas": {"ha": 3}}]}
    assert summary_records(listing) == [{"grid": "1", "year": 2020, "status": "ok", "areas.ha": 3}]
    assert summary_records([{"grid": "2", "status": "failed"}]) == [{"grid": "2", "status": "failed"}]
    assert summary_records({"years": {"2001": {"status": "written"}}}) == [{"year": "2001", "status": "written"}]
    assert summary_records({"nothing": 1}) == []


def test_report_errors_name_the_problem(run_folder, tmp_path):
    run, _, _ = run_folder
    code, _, err = run_cli("report", run, "--quicklook", "1999", "--output", tmp_path)
    assert code == 2 and str(run) in err and "no classification COG for year 1999" in err
    code, _, err = run_cli("report", tmp_path / "missing", "--output", tmp_path)
    assert code == 2 and "missing: no such file or folder" in err


# --------------------------------------------------------------------------------------------------
# Headless Chromium through the DevTools protocol (offline: a local websocket)
# --------------------------------------------------------------------------------------------------
def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"headless Chromium is not installed (Debian: `{APT_COMMAND}`)")


def open_in_chromium(url: str, width: int = 1200, height: int = 1400, settle: float = 0.8) -> tuple[list, bytes]:
    """Load `url` in headless Chromium; return (console errors / warnings / exceptions / failed loads, screenshot PNG)."""
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
    return problems, screenshot


def _chart_pixels(png: bytes) -> int:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(CHART_RGB)).sum(axis=2) <= 6).sum())


def test_page_opens_in_chromium_without_console_errors_and_shows_the_chart(run_folder):
    _, _, out = run_folder
    problems, screenshot = open_in_chromium((out / "report.html").resolve().as_uri())
    assert problems == []
    assert _chart_pixels(screenshot) > 500  # the total line of the area chart, drawn in its own colour


def test_the_chromium_check_catches_errors_and_missing_charts(tmp_path):
    """The checker itself: a page with a console error, an exception and a missing image, and no chart."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title><link rel="icon" href="data:,"></head>'
                   '<body><p>no chart</p><img src="missing.png"><script>console.error("boom"); nothere();</script></body></html>')
    problems, screenshot = open_in_chromium(bad.resolve().as_uri())  # skips like the test above without Chromium
    kinds = {p[0] for p in problems}
    assert {"console", "exception", "network"} <= kinds
    assert _chart_pixels(screenshot) == 0


def test_quicklook_shows_the_probability_band(tmp_path):
    from pipeline.products import io as pio
    from pipeline.products.report import quicklook_png
    from tests.products_support import write_raster

    classes = np.zeros((50, 60), np.uint8)
    classes[10:20, 10:30] = 30
    probability = np.linspace(0, 255, 3000).reshape(50, 60).astype(np.uint8)
    path = write_raster(tmp_path / "7" / "7_2005.tif", np.stack([classes, probability]), nodata=255,
                        tags={"grid": "7", "year": 2005}, descriptions=["mining_classification", "mining_probability"])
    png, panels = quicklook_png(pio.describe_raster(str(path)))
    assert panels == ["probability of mining", "classes"]
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_quicklook_reduction_keeps_every_mine():
    from pipeline.products.report import reduce_classes

    values = np.zeros((1000, 900), np.uint8)
    values[:, 800:] = 255
    values[123, 457] = 30  # one mining pixel
    reduced = reduce_classes(values, 30, 255, 100)
    assert reduced.shape == (100, 90)
    assert (reduced == 1).sum() == 1 and reduced[12, 45] == 1
    assert (reduced[:, 80:] == 255).all() and (reduced[:, :80][reduced[:, :80] != 1] == 0).all()
