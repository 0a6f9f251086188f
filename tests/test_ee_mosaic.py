"""The annual mosaic graph (DESIGN.md §1.1–1.2), serialized offline with Earth Engine's own test harness:
the collections and dates per year, the QA_PIXEL bits, the band renaming, the index expressions, the scaling."""
from __future__ import annotations

import json

import pytest
from ee import apitestcase

import ee
from pipeline.earthengine import mosaic
from tests.support.earthengine import calls, const, invocations, walk_tree


def unique_constants(obj, name: str, arg: str) -> set:
    """The distinct constant values of argument `arg` of function `name` (lists as tuples)."""
    values = set()
    for args in calls(obj, name):
        value = const(args.get(arg))
        values.add(tuple(value) if isinstance(value, list) else value)
    return values


class MosaicGraphTest(apitestcase.ApiTestCase):
    def test_collections_and_dates_by_year(self):
        cases = {
            1985: {"LANDSAT/LT05/C02/T1_TOA", "LANDSAT/LE07/C02/T1_TOA", "LANDSAT/LC08/C02/T1_TOA"},
            2013: {"LANDSAT/LT05/C02/T1_TOA", "LANDSAT/LE07/C02/T1_TOA", "LANDSAT/LC08/C02/T1_TOA"},
            2014: {"LANDSAT/LC08/C02/T1_TOA", "LANDSAT/LC09/C02/T1_TOA"},
            2023: {"LANDSAT/LC08/C02/T1_TOA", "LANDSAT/LC09/C02/T1_TOA"},
        }
        for year, expected in cases.items():
            image = mosaic.annual_mosaic(year)
            self.assertEqual(unique_constants(image, "ImageCollection.load", "id"), expected)
            ranges = {(const(a["start"]), const(a["end"])) for a in calls(image, "DateRange")}
            self.assertEqual(ranges, {(f"{year}-01-01", f"{year + 1}-01-01")})
            filters = calls(image, "Filter.dateRangeContains")
            self.assertTrue(filters)
            self.assertEqual({const(f["rightField"]) for f in filters}, {"system:time_start"})
            self.assertEqual(len(calls(image, "reduce.median")) > 0, True)
        with self.assertRaises(ValueError):
            mosaic.annual_mosaic(1984)

    def test_qa_pixel_bits_1_3_4_are_masked(self):
        image = mosaic.annual_mosaic(2020)
        expected_mask = (1 << 1) | (1 << 3) | (1 << 4)
        self.assertEqual(expected_mask, 0b11010)
        masks = calls(image, "Image.bitwiseAnd")
        self.assertTrue(masks)
        for args in masks:
            self.assertEqual(const(args["image1"]["functionInvocationValue"]["arguments"]["bandSelectors"]), ["QA_PIXEL"])
            constant = args["image2"]["functionInvocationValue"]
            self.assertEqual(constant["functionName"], "Image.constant")
            self.assertEqual(const(constant["arguments"]["value"]), expected_mask)
        # clear where (QA & mask) == 0, applied with updateMask
        for args in calls(image, "Image.updateMask"):
            mask = args["mask"]["functionInvocationValue"]
            self.assertEqual(mask["functionName"], "Image.eq")
            self.assertEqual(const(mask["arguments"]["image2"]["functionInvocationValue"]["arguments"]["value"]), 0)

    def test_bands_renamed_per_sensor(self):
        names = ["blue", "green", "red", "nir", "swir1", "swir2"]
        tm_etm = ["B1", "B2", "B3", "B4", "B5", "B7"]
        oli = ["B2", "B3", "B4", "B5", "B6", "B7"]
        expected = {
            "LANDSAT/LT05/C02/T1_TOA": tm_etm,
            "LANDSAT/LE07/C02/T1_TOA": tm_etm,
            "LANDSAT/LC08/C02/T1_TOA": oli,
            "LANDSAT/LC09/C02/T1_TOA": oli,
        }
        for year, count in ((2010, 3), (2020, 2)):
            found = {}
            for args in calls(mosaic.annual_mosaic(year), "Collection.map"):
                (collection_id,) = {const(a["id"]) for fn, a in walk_tree(args["collection"]) if fn == "ImageCollection.load"}
                selects = [a for fn, a in walk_tree(args["baseAlgorithm"]) if fn == "Image.select" and "newNames" in a]
                renames = {(tuple(const(a["bandSelectors"])), tuple(const(a["newNames"]))) for a in selects}
                self.assertEqual(len(renames), 1)
                found[collection_id] = renames.pop()
            self.assertEqual(len(found), count)
            for collection_id, (selectors, new_names) in found.items():
                self.assertEqual(list(selectors), expected[collection_id])
                self.assertEqual(list(new_names), names)

    def test_index_expressions(self):
        """The serialized graph holds the published expressions (Image.parseExpression), never normalizedDifference."""
        published = {  # Mapbiomas09/0-Mosaic.js createIndexs, verbatim
            "(((banda4 - banda3)/(banda4 + banda3)))": {"banda4": "nir", "banda3": "red"},
            "((( banda2 - banda5) / (banda2 + banda5)))": {"banda2": "green", "banda5": "swir1"},
            "(((banda5 - banda4)/(banda4 + banda5)))": {"banda5": "swir1", "banda4": "nir"},
        }
        for preset, names in (("appendix", {"ndvi", "mndwi", "ndsi"}), ("c9-code", {"ndvi", "mndwi"})):
            image = mosaic.annual_mosaic(2020, preset)
            self.assertEqual(calls(image, "Image.normalizedDifference"), [])
            found = {}
            for args in calls(image, "Image.rename"):
                call = args["input"].get("functionInvocationValue", {})
                parse = call.get("functionReference", {}).get("functionInvocationValue", {})
                if parse.get("functionName") != "Image.parseExpression":
                    continue
                expression = const(parse["arguments"]["expression"])
                self.assertEqual(const(parse["arguments"]["vars"])[0], "DEFAULT_EXPRESSION_IMAGE")
                variables = {
                    var: const(value["functionInvocationValue"]["arguments"]["bandSelectors"])[0]
                    for var, value in call["arguments"].items() if var != "DEFAULT_EXPRESSION_IMAGE"
                }
                self.assertEqual(variables, published[expression])
                found[const(args["names"])[0]] = expression
            self.assertEqual(set(found), names)
        self.assertEqual(found["ndvi"], "(((banda4 - banda3)/(banda4 + banda3)))")

    def test_scaling_clamping_and_band_order(self):
        for preset, bands in (
            ("appendix", ["swir1", "nir", "red", "mndwi", "ndvi", "ndsi"]),
            ("c9-code", ["swir1", "nir", "red", "green", "mndwi", "ndvi"]),
        ):
            image = mosaic.annual_mosaic(2000, preset)
            top = invocations(image)
            renamed = [a for fn, a in top if fn == "Image.rename" and
                       a["input"].get("functionInvocationValue", {}).get("functionName") == "Image.toByte"]
            self.assertEqual(len(renamed), 1)
            self.assertEqual(const(renamed[0]["names"]), bands)
            clamps = calls(image, "Image.clamp")
            self.assertEqual(len(clamps), len(bands))
            scaled = {}
            for args in clamps:
                self.assertEqual((const(args["low"]), const(args["high"])), (0, 255))
                product = args["input"]["functionInvocationValue"]
                self.assertEqual(product["functionName"], "Image.multiply")
                factor = const(product["arguments"]["image2"]["functionInvocationValue"]["arguments"]["value"])
                inner = product["arguments"]["image1"]["functionInvocationValue"]
                if inner["functionName"] == "Image.add":  # index: (x + 1) * 127
                    self.assertEqual(const(inner["arguments"]["image2"]["functionInvocationValue"]["arguments"]["value"]), 1)
                    band = const(inner["arguments"]["image1"]["functionInvocationValue"]["arguments"]["bandSelectors"])[0]
                    self.assertEqual(factor, 127)
                    self.assertIn(band, ("ndvi", "mndwi", "ndsi"))
                else:  # reflectance * 255
                    band = const(inner["arguments"]["bandSelectors"])[0]
                    self.assertEqual(factor, 255)
                    self.assertEqual(inner["functionName"], "Image.select")
                    self.assertIn(band, ("blue", "green", "red", "nir", "swir1", "swir2"))
                scaled[band] = factor
            self.assertEqual(sorted(scaled), sorted(bands))
            self.assertEqual(len(calls(image, "Image.toByte")), 1)

    def test_region_filters_bounds_and_graph_is_json(self):
        region = ee.Geometry.Rectangle([-56.0, -7.0, -55.0, -6.0], "EPSG:4326", False)
        image = mosaic.annual_mosaic(2005, region=region)
        bounds = calls(image, "Filter.intersects")
        self.assertEqual(len({json.dumps(b, sort_keys=True) for b in bounds}), 1)
        self.assertEqual(len(unique_constants(image, "ImageCollection.load", "id")), 3)
        json.loads(image.serialize(for_cloud_api=True))

    def test_unknown_preset(self):
        with self.assertRaisesRegex(ValueError, "unknown band preset"):
            mosaic.annual_mosaic(2020, "rgb")


@pytest.mark.parametrize("year, sensors", [(1999, ("L5", "L7", "L8")), (2014, ("L8", "L9"))])
def test_sensor_choice(year, sensors):
    assert mosaic.sensors_for_year(year) == sensors
