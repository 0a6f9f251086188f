"""The band metadata every COG carries (issue 15, deliverable 5): one function, `describe_cog`, used by
both writers (`pipeline.io.cog.encode_cog` for the pipeline and `filter`, `CogWriter` for the products)."""
from __future__ import annotations

import os

import numpy as np
import rasterio
from affine import Affine
from rasterio.io import MemoryFile
from rio_cogeo.cogeo import cog_validate

from pipeline.io.cog import CogWriter, band_classes
from pipeline.io.filesystem import absolute_uri
from pipeline.io.cog import encode_cog

TRANSFORM = Affine(0.00025, 0, -55.0, 0, -0.00025, -6.0)
CLASSES = [
    {"value": 30, "name": "mining", "title": "mining", "color_hint": "9C0027"},
    {"value": 0, "name": "not_mining", "title": "not mining", "color_hint": "ECECEC"},
    {"value": 255, "name": "not_observed", "title": "not observed (no valid mosaic pixel)", "color_hint": "000000", "nodata": True},
]


def _classes(seed=0, shape=(300, 280)):
    return np.random.default_rng(seed).choice(np.array([0, 30, 255], np.uint8), size=shape)


def test_classification_alone_has_a_colour_table_class_names_and_descriptions():
    data = encode_cog([_classes()], "EPSG:4326", TRANSFORM, {"model": "gs://b/m", "grid": "7"}, ["mining_classification"])
    assert data == encode_cog([_classes()], "EPSG:4326", TRANSFORM, {"model": "gs://b/m", "grid": "7"}, ["mining_classification"])
    with MemoryFile(data) as memory, memory.open() as cog:
        assert cog.colormap(1)[30] == (156, 0, 39, 255) and cog.colormap(1)[0] == (236, 236, 236, 255)
        assert cog.colormap(1)[255][3] == 0  # not observed is transparent
        assert band_classes(cog.tags(1)) == CLASSES
        assert cog.descriptions == ("mining_classification: 30 mining, 0 not mining, 255 not observed",)
        assert cog.tags()["model"] == "gs://b/m" and cog.tags()["software"] == "mining-mapper"
        assert cog.scales == (1.0,) and cog.offsets == (0.0,)


def test_extra_bands_carry_scale_offset_and_descriptions(tmp_path):
    probability = np.arange(300 * 280, dtype=np.uint32).reshape(300, 280) % 255
    origin = np.full((300, 280), 120, np.uint8)
    names = ["mining_classification", "probability_x255", "gapfill_origin_year"]
    data = encode_cog([_classes(), probability.astype(np.uint8), origin], "EPSG:4326", TRANSFORM, {}, names)
    path = tmp_path / "three.tif"
    path.write_bytes(data)
    assert cog_validate(str(path))[0]
    with rasterio.open(path) as cog:
        assert cog.scales == (1.0, 1 / 255, 1.0) and cog.offsets == (0.0, 0.0, 1900.0)
        assert [d.split(":")[0] for d in cog.descriptions] == names
        assert band_classes(cog.tags(1)) == CLASSES and band_classes(cog.tags(2)) == []
        # a TIFF palette holds one band only, so a three-band file carries the classes as the band tag alone
        assert cog.colorinterp[0] != rasterio.enums.ColorInterp.palette


def test_cog_writer_uses_the_same_metadata():
    with CogWriter(width=280, height=300, dtype="uint8", crs="EPSG:4326", transform=TRANSFORM, nodata=255,
                   tags={"product": "classification"}, descriptions=["mining_classification"]) as writer:
        writer.write(_classes(), rasterio.windows.Window(0, 0, 280, 300))
        path = writer.finish()
        assert cog_validate(path)[0]
        with rasterio.open(path) as cog:
            assert cog.colormap(1)[30] == (156, 0, 39, 255) and band_classes(cog.tags(1)) == CLASSES
            assert cog.descriptions[0].startswith("mining_classification: ")
            assert cog.tags()["product"] == "classification" and cog.tags()["software_version"]
    with CogWriter(width=10, height=10, dtype="uint16", crs="EPSG:4326", transform=TRANSFORM, nodata=65535,
                   tags={}, descriptions=["class_id"]) as writer:
        writer.write(np.full((10, 10), 115, np.uint16), rasterio.windows.Window(0, 0, 10, 10))
        with rasterio.open(writer.finish()) as cog:
            assert cog.descriptions == ("class_id",)  # pipeline.products.stats recognises class_id rasters by it
            classes = {c["value"]: c for c in band_classes(cog.tags(1))}
            assert classes[215] == {"value": 215, "name": "garimpo-gold", "title": "215 gold (garimpo)", "color_hint": "E6A800"}
            assert classes[115]["name"] == "industrial-gold" and classes[101]["name"] == "industrial-metallic"
            assert classes[123]["name"] == "industrial-precious_stones_and_ornamental_rocks"
            assert classes[301]["name"] == "unidentified-other" and classes[0]["name"] == "not_mining"
            assert classes[65535]["nodata"] is True and len({c["name"] for c in classes.values()}) == len(classes)
            assert cog.colorinterp[0] != rasterio.enums.ColorInterp.palette  # no 65,536-entry palette
    with CogWriter(width=10, height=10, dtype="uint8", crs="EPSG:4326", transform=TRANSFORM, nodata=0,
                   tags={}, descriptions=["land_use_with_mining"]) as writer:
        writer.write(np.full((10, 10), 30, np.uint8), rasterio.windows.Window(0, 0, 10, 10))
        with rasterio.open(writer.finish()) as cog:  # a name the table does not know: written as given
            assert cog.descriptions == ("land_use_with_mining",) and band_classes(cog.tags(1)) == []


def test_absolute_uri():
    assert absolute_uri("gs://bucket/models/unet") == "gs://bucket/models/unet"
    assert absolute_uri("model/unet.keras") == "file://" + os.path.abspath("model/unet.keras")
    assert absolute_uri("/abs/m") == "file:///abs/m"
