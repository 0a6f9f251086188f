"""The STAC Collection of a run (issue 15, deliverable 5), validated OFFLINE against the JSON schemas of STAC
1.1.0 and of the projection, raster and classification extensions vendored in tests/schemas (SOURCE.md)."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import rasterio
import referencing
import referencing.exceptions
from affine import Affine
from rasterio.warp import transform_bounds
from jsonschema_specifications import REGISTRY as METASCHEMAS

from pipeline.errors import UserError
from pipeline.io import rasters as annual_rasters
from pipeline.products.stac import build_collection, typed
from pipeline.io.cog import encode_cog

SCHEMAS = Path(__file__).parent / "schemas"
CORE = "https://schemas.stacspec.org/v1.1.0/"
LOCAL = {  # $id prefix → vendored folder
    CORE + "item-spec/json-schema/": SCHEMAS / "stac-spec/v1.1.0",
    CORE + "collection-spec/json-schema/": SCHEMAS / "stac-spec/v1.1.0",
    CORE + "catalog-spec/json-schema/": SCHEMAS / "stac-spec/v1.1.0",
    "https://stac-extensions.github.io/raster/v1.1.0/": SCHEMAS / "raster/v1.1.0",
    "https://stac-extensions.github.io/classification/v1.1.0/": SCHEMAS / "classification/v1.1.0",
    "https://stac-extensions.github.io/projection/v2.0.0/": SCHEMAS / "projection/v2.0.0",
    "https://geojson.org/schema/": SCHEMAS / "geojson",
}
UTM = "EPSG:31976"
TRANSFORM = Affine(30.0, 0, 400000.0, 0, -30.0, 270000.0)


def _retrieve(uri: str) -> referencing.Resource:
    for prefix, folder in LOCAL.items():
        if uri.startswith(prefix):
            path = folder / uri[len(prefix):].split("#")[0]
            return referencing.Resource.from_contents(json.loads(path.read_text()))
    raise referencing.exceptions.NoSuchResource(ref=f"{uri} (not vendored; validation is offline)")


REGISTRY = referencing.Registry(retrieve=_retrieve).combine(METASCHEMAS)


def validate(document: dict) -> list[str]:
    """Validate a STAC document against its core schema and every extension it lists; returns the schemas used."""
    kind = {"Feature": "item-spec/json-schema/item.json", "Collection": "collection-spec/json-schema/collection.json"}
    used = [CORE + kind[document["type"]], *document.get("stac_extensions", [])]
    for uri in used:
        schema = _retrieve(uri).contents
        jsonschema.Draft7Validator(schema, registry=REGISTRY).validate(document)
    return used


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Two grids × two years of pipeline-style COGs (class, probability, origin bands), then the collection."""
    root = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(3)
    refs = []
    for grid, column in (("1010", 0), ("1011", 1)):
        for year in (2019, 2020):
            classes = rng.choice(np.array([0, 30, 255], np.uint8), size=(64, 80))
            probability = rng.integers(0, 255, size=(64, 80), dtype=np.uint8)
            origin = np.full((64, 80), year - 1900, np.uint8)
            tags = {"grid": grid, "year": year, "model": "unet=gs://bucket/model", "threshold": "0.5",
                    "filter_mode": "appendix", "filter_min_component_size": "10", "software_version": "0.1.0"}
            path = root / grid / f"{grid}_{year}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            transform = TRANSFORM @ Affine.translation(80 * column, 0)
            path.write_bytes(encode_cog([classes, probability, origin], UTM, transform, tags,
                                        ["mining_classification", "probability_x255", "gapfill_origin_year"]))
            refs.append(annual_rasters.describe_raster(str(path)))
    files = build_collection(refs, str(root / "stac"), title="test run")
    for path, data in files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    documents = {Path(p).relative_to(root / "stac").as_posix(): json.loads(d) for p, d in files.items()}
    return root, documents


def test_every_document_validates_offline_against_core_and_extension_schemas(collection):
    _, documents = collection
    assert sorted(documents) == sorted(["collection.json"] + [f"classification-{g}-{y}/classification-{g}-{y}.json"
                                                             for g in ("1010", "1011") for y in (2019, 2020)])
    for name, document in documents.items():
        used = validate(document)
        assert any("raster/v1.1.0" in u for u in used) and any("classification/v1.1.0" in u for u in used), name
        assert any("projection/v2.0.0" in u for u in used), name


def test_the_schemas_do_reject_bad_documents(collection):
    _, documents = collection
    item = json.loads(json.dumps(documents["classification-1010-2019/classification-1010-2019.json"]))
    item["assets"]["data"]["raster:bands"][0]["classification:classes"][1]["name"] = "not mining"  # space
    with pytest.raises(jsonschema.ValidationError):
        validate(item)
    item = json.loads(json.dumps(documents["classification-1010-2019/classification-1010-2019.json"]))
    item["assets"]["data"]["raster:bands"][0]["nodata"] = "255"  # a number as text
    with pytest.raises(jsonschema.ValidationError):
        validate(item)


def test_collection_extent_licence_and_summaries(collection):
    root, documents = collection
    doc = documents["collection.json"]
    assert doc["type"] == "Collection" and doc["license"] == "CC-BY-4.0" and doc["title"] == "test run"
    assert doc["extent"]["temporal"]["interval"] == [["2019-01-01T00:00:00Z", "2020-12-31T23:59:59Z"]]
    west, south, east, north = doc["extent"]["spatial"]["bbox"][0]
    bboxes = [d["bbox"] for n, d in documents.items() if n != "collection.json"]
    assert (west, south, east, north) == (min(b[0] for b in bboxes), min(b[1] for b in bboxes),
                                          max(b[2] for b in bboxes), max(b[3] for b in bboxes))
    # the two grids side by side: x 400 000–404 800 m, y 268 080–270 000 m in UTM 22N
    expected = transform_bounds(UTM, "EPSG:4326", 400000, 268080, 404800, 270000, densify_pts=21)
    assert [west, south, east, north] == pytest.approx(expected, abs=1e-9)
    summaries = doc["summaries"]
    assert summaries["mining_mapper:year"] == {"minimum": 2019, "maximum": 2020}
    assert summaries["mining_mapper:grid"] == [1010, 1011] and summaries["mining_mapper:threshold"] == [0.5]
    assert summaries["proj:code"] == [UTM] and summaries["mining_mapper:product"] == ["classification"]
    assert [(c["value"], c["name"]) for c in summaries["classification:classes"]] == [
        (30, "mining"), (0, "not_mining"), (255, "not_observed")]


def test_item_bands_projection_and_numbers(collection):
    root, documents = collection
    item = documents["classification-1011-2020/classification-1011-2020.json"]
    props = item["properties"]
    assert props["proj:code"] == UTM and props["proj:wkt2"].startswith("PROJCRS[")  # WKT2, not GDAL's WKT1
    assert props["proj:shape"] == [64, 80] and props["proj:transform"] == [30.0, 0.0, 402400.0, 0.0, -30.0, 270000.0]
    assert props["mining_mapper:grid"] == 1011 and props["mining_mapper:year"] == 2020
    assert props["mining_mapper:threshold"] == 0.5 and props["mining_mapper:filter_min_component_size"] == 10
    assert props["mining_mapper:model"] == "unet=gs://bucket/model" and props["mining_mapper:software_version"] == "0.1.0"
    asset = item["assets"]["data"]
    classes_band, probability_band, origin_band = asset["raster:bands"]
    assert classes_band["nodata"] == 255 and classes_band["data_type"] == "uint8" and "scale" not in classes_band
    assert classes_band["spatial_resolution"] == 30
    assert {c["value"]: c["name"] for c in classes_band["classification:classes"]} == {30: "mining", 0: "not_mining", 255: "not_observed"}
    assert [c for c in classes_band["classification:classes"] if c.get("nodata")] == [
        {"value": 255, "name": "not_observed", "title": "not observed (no valid mosaic pixel)", "color_hint": "000000", "nodata": True}]
    assert probability_band["scale"] == pytest.approx(1 / 255) and "offset" not in probability_band
    assert origin_band["offset"] == 1900 and "scale" not in origin_band
    assert "classification:classes" not in probability_band
    assert (root / "stac" / "classification-1011-2020" / asset["href"]).resolve() == (root / "1011" / "1011_2020.tif").resolve()


def test_typed_tags_and_errors(tmp_path):
    assert [typed(v) for v in ("0.5", "10", "0012", "nan", "appendix", "1e-3")] == [0.5, 10, "0012", "nan", "appendix", 0.001]
    with pytest.raises(UserError, match="no COG"):
        build_collection([], str(tmp_path))
    path = tmp_path / "x_2020.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8") as dst:
        dst.write(np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(UserError, match="x_2020.tif: raster has no CRS"):
        build_collection([annual_rasters.describe_raster(str(path))], str(tmp_path / "stac"))


def test_class_id_cogs_carry_their_table_classes_and_validate(tmp_path):
    from rasterio.windows import Window

    from pipeline.io.cog import CogWriter

    path = tmp_path / "class_id" / "class_id_2020.tif"
    path.parent.mkdir()
    with CogWriter(width=40, height=30, dtype="uint16", crs=UTM, transform=TRANSFORM, nodata=65535,
                   tags={"product": "class_id", "year": 2020}, descriptions=["class_id"]) as writer:
        writer.write(np.tile(np.array([0, 215, 115, 65535], np.uint16), (30, 10)), Window(0, 0, 40, 30))
        path.write_bytes(Path(writer.finish()).read_bytes())
    files = build_collection([annual_rasters.describe_raster(str(path))], str(tmp_path / "stac"))
    documents = [json.loads(data) for data in files.values()]
    for document in documents:
        validate(document)
    item = next(d for d in documents if d["type"] == "Feature")
    (band,) = item["assets"]["data"]["raster:bands"]
    assert band["data_type"] == "uint16" and band["nodata"] == 65535
    names = {c["value"]: c["name"] for c in band["classification:classes"]}
    assert names[215] == "garimpo-gold" and names[0] == "not_mining" and names[65535] == "not_observed"
