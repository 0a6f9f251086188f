"""Post-steps in Earth Engine (DESIGN.md §3 spatial filter, §5 prevalence, §6 class_id) on the offline harness:
the graphs, the tables kept as data, and the export-to-asset requests they start."""
from __future__ import annotations

import json
from unittest import mock

import ee
import pytest
from ee import apitestcase

from pipeline.cli import main
from pipeline.earthengine import auth, poststeps
from pipeline.io import tables
from pipeline.errors import UserError
from tests.conftest import shared_path
from tests.support.earthengine import UUID, calls, const, http_error, invocations

# DESIGN.md §5, written out again: class code -> rank
DESIGN_RANKS = [(30, 1), (23, 2), (5, 3), (31, 4), (32, 5), (24, 6), (20, 7), (39, 8), (40, 9), (41, 10), (36, 11),
                (46, 12), (47, 13), (48, 14), (19, 15), (9, 16), (29, 17), (25, 18), (33, 19), (3, 20), (4, 21),
                (11, 22), (12, 23), (15, 24), (21, 25)]
# DESIGN.md §6: the codes it names, with their type
DESIGN_CODES = {101: "industrial", 102: "industrial", 103: "industrial", 109: "industrial", 110: "industrial",
                113: "industrial", 115: "industrial", 116: "industrial", 122: "industrial", 123: "industrial",
                126: "industrial", 130: "industrial", 214: "garimpo", 215: "garimpo", 216: "garimpo",
                217: "garimpo", 223: "garimpo", 301: None}
COLLECTION = "projects/my-project/assets/mining/c9"


def unique(obj, name):
    """Distinct argument dicts of every invocation of `name` (the expanded form repeats shared subgraphs)."""
    return [json.loads(s) for s in sorted({json.dumps(a, sort_keys=True) for a in calls(obj, name)})]


def test_prevalence_table_is_design_table(tmp_path):
    ranks = tables.load_prevalence_table()
    assert list(ranks.items()) == DESIGN_RANKS
    bad = tmp_path / "prevalence.json"
    bad.write_text(json.dumps({"classes": [{"class": 30, "rank": 1}, {"class": 30, "rank": 2}]}))
    with pytest.raises(UserError, match="prevalence.json: class 30 is listed twice"):
        tables.load_prevalence_table(bad)


def test_class_id_table_holds_design_codes_and_resolves_types_and_substances():
    table = tables.load_class_id_table()
    assert {e["code"]: e["type"] for e in table.codes if e["code"] in DESIGN_CODES} == DESIGN_CODES
    assert [e["code"] for e in table.codes][14:17] == [115, 130, 116]  # Table 3's order, not sorted
    assert table.unidentified == 301
    assert table.type_of("FASE", " lavra  garimpeira ") == "garimpo"
    assert table.type_of("FASE", "CONCESSÃO DE LAVRA") == "industrial"
    assert table.type_of("STATUS_ECONOMICO", "Garimpo") == "garimpo"
    assert table.type_of("STATUS_ECONOMICO", "Mina") == "industrial"
    assert table.type_of("FASE", "REQUERIMENTO DE PESQUISA") is None
    assert table.substance_of("Minério de Ouro") == "gold"
    cases = {("garimpo", "gold"): 215, ("industrial", "gold"): 115, ("garimpo", "tin"): 214,
             ("industrial", "iron"): 102, ("industrial", "limestone"): 122, ("garimpo", "class-2 minerals"): 217,
             ("industrial", "class-2 minerals"): 117, ("garimpo", "precious stones"): 224, ("garimpo", "ornamental rocks"): 225, ("industrial", "coal"): 127, ("industrial", "peat"): 126,
             ("industrial", "tantalum"): 101, ("garimpo", "tantalum"): 301, ("garimpo", None): None}
    for (mining_type, substance), code in cases.items():
        assert table.code_for(mining_type, substance) == code, (mining_type, substance)


def test_class_id_table_on_real_sigmine_titles():
    import geopandas as gpd

    path = shared_path("occurrences", "sigmine_amapa_2021.gpkg")
    frame = gpd.read_file(path, layer="sigmine_AP_2021_centroids")
    table = tables.load_class_id_table()
    pairs = table.name_code_pairs("FASE")
    codes = [pairs.get((tables.normalize_name(f), tables.normalize_name(s))) for f, s in zip(frame.FASE, frame.SUBS)]
    direct = [table.code_for(table.type_of("FASE", f), table.substance_of(s)) for f, s in zip(frame.FASE, frame.SUBS)]
    assert codes == direct  # the server-side lookup table and the local resolution agree on every title
    by_pair = dict(zip(zip(frame.FASE, frame.SUBS), codes))
    assert by_pair[("LAVRA GARIMPEIRA", "MINÉRIO DE OURO")] == 215
    assert by_pair[("CONCESSÃO DE LAVRA", "MINÉRIO DE FERRO")] == 102
    assert by_pair[("REQUERIMENTO DE PESQUISA", "MINÉRIO DE OURO")] is None  # not a mine: not used
    known = {e["code"] for e in table.codes}
    assert {c for c in codes if c is not None} <= known
    assert sum(c is not None for c in codes) > 100


class PostStepGraphTest(apitestcase.ApiTestCase):
    def tearDown(self):
        super().tearDown()
        auth.reset()

    def classification(self):
        return poststeps.year_classification(COLLECTION, 2020)

    def test_year_classification_mosaics_the_years_images(self):
        image = self.classification()
        self.assertEqual({const(a["id"]) for a in calls(image, "ImageCollection.load")}, {COLLECTION})
        (equals,) = unique(image, "Filter.equals")
        self.assertEqual((const(equals["leftField"]), const(equals["rightValue"])), ("year", 2020))
        self.assertEqual(len(calls(image, "ImageCollection.mosaic")), 1)

    def test_spatial_filter_appendix(self):
        image = poststeps.spatial_filter(self.classification(), "appendix")
        (count,) = unique(image, "Image.connectedPixelCount")
        self.assertEqual((const(count["maxSize"]), const(count["eightConnected"])), (10, True))
        mining = count["input"]["functionInvocationValue"]  # selfMask of classification == 30
        self.assertEqual(mining["functionName"], "Image.selfMask")
        eq = mining["arguments"]["image"]["functionInvocationValue"]
        self.assertEqual(eq["functionName"], "Image.eq")
        self.assertEqual(const(eq["arguments"]["image2"]["functionInvocationValue"]["arguments"]["value"]), 30)
        (lt,) = [a for a in unique(image, "Image.lt")]
        self.assertEqual(const(lt["image2"]["functionInvocationValue"]["arguments"]["value"]), 10)
        (where,) = unique(image, "Image.where")
        self.assertEqual(const(where["value"]["functionInvocationValue"]["arguments"]["value"]), 0)
        self.assertEqual(calls(image, "Reducer.mode"), [])
        self.assertEqual(len(calls(image, "Image.toByte")), 1)

    def test_spatial_filter_c9_code_takes_the_neighbourhood_mode(self):
        image = poststeps.spatial_filter(self.classification(), "c9-code", min_size=12, window=5)
        (count,) = unique(image, "Image.connectedPixelCount")
        self.assertEqual((const(count["maxSize"]), const(count["eightConnected"])), (12, True))
        (kernel,) = unique(image, "Kernel.square")
        self.assertEqual((const(kernel["radius"]), const(kernel["units"])), (2, "pixels"))
        self.assertEqual(len(unique(image, "Image.neighborhoodToBands")), 1)
        self.assertEqual(len(unique(image, "Reducer.mode")), 1)
        (where,) = unique(image, "Image.where")
        self.assertEqual(where["value"]["functionInvocationValue"]["functionName"], "Image.reduce")
        # Literal: the result is masked again where the mode says not observed (255).
        (mask,) = unique(image, "Image.updateMask")
        self.assertEqual(mask["mask"]["functionInvocationValue"]["functionName"], "Image.neq")
        self.assertEqual(const(mask["mask"]["functionInvocationValue"]["arguments"]["image2"]["functionInvocationValue"]["arguments"]["value"]), 255)
        with self.assertRaises(ValueError):
            poststeps.spatial_filter(self.classification(), "majority")
        with self.assertRaises(ValueError):
            poststeps.spatial_filter(self.classification(), min_size=2000)

    def test_c9_code_classification_gives_not_observed_a_value_inside_the_images(self):
        image = poststeps.year_classification(COLLECTION, 2020, not_observed=255)
        unmasks = unique(image, "Image.unmask")
        # Each image unmasked to 255 within its own footprint; the observed mosaic unmasked with that.
        self.assertEqual(len(unmasks), 2)
        (inside,) = [u for u in unmasks if "sameFootprint" in u]
        self.assertEqual(const(inside["sameFootprint"]), True)
        self.assertEqual(inside["input"], {"argumentReference": inside["input"]["argumentReference"]})  # per image, in map
        value = inside["value"]["functionInvocationValue"]
        self.assertEqual((value["functionName"], const(value["arguments"]["value"])), ("Image.constant", 255))
        (outer,) = [u for u in unmasks if "sameFootprint" not in u]
        self.assertEqual(outer["value"]["functionInvocationValue"]["functionName"], "ImageCollection.mosaic")
        self.assertEqual(calls(poststeps.year_classification(COLLECTION, 2020), "Image.unmask"), [])

    def test_prevalence_integration_ranks_from_the_table(self):
        landcover = ee.Image("projects/mapbiomas-public/assets/lulc").select("classification_2020")
        image = poststeps.integrate_mining(self.classification(), landcover, tables.load_prevalence_table())
        remaps = unique(image, "Image.remap")
        self.assertEqual(len(remaps), 2)  # one per layer: mining, land cover
        for remap in remaps:
            self.assertEqual(const(remap["from"]), [c for c, _ in DESIGN_RANKS])
            self.assertEqual(const(remap["to"]), [r for _, r in DESIGN_RANKS])
            self.assertEqual(const(remap["defaultValue"]), 26)  # unlisted classes rank last
        (reducer,) = unique(image, "Reducer.min")
        self.assertEqual(const(reducer["numInputs"]), 2)
        (select,) = [a for a in unique(image, "Image.select") if const(a["bandSelectors"]) == [1]]
        self.assertEqual(const(select["newNames"]), ["classification"])
        reduced = select["input"]["functionInvocationValue"]
        self.assertEqual(reduced["functionName"], "ImageCollection.reduce")
        # the mining layer claims only its mining pixels
        masks = unique(image, "Image.updateMask")
        self.assertTrue(any(m["mask"]["functionInvocationValue"]["functionName"] == "Image.eq" for m in masks))

    def test_class_id_aggregation_graph(self):
        table = tables.load_class_id_table()
        occurrences = poststeps.occurrences_with_class_id(ee.FeatureCollection("projects/my-project/assets/sigmine"),
                                                          table)
        region = poststeps.grid_region([1200, 1201])
        image = poststeps.class_id_image(self.classification(), occurrences, table, region, buffer_m=1000)
        (vectors,) = unique(image, "Image.reduceToVectors")
        self.assertEqual((const(vectors["eightConnected"]), const(vectors["geometryType"])), (True, "polygon"))
        (within,) = unique(image, "Filter.withinDistance")
        self.assertEqual(const(within["distance"]), 1000)
        (best,) = unique(image, "Join.saveBest")
        self.assertEqual((const(best["matchKey"]), const(best["outer"])), ("nearest", True))
        text = json.dumps(ee.serializer.encode(image, for_cloud_api=True))
        self.assertIn('"constantValue": 301', text)
        lookup = [const(a["dictionary"]) for fn, a in invocations(occurrences) if fn == "Dictionary.get"]
        self.assertIn(("LAVRA GARIMPEIRA|MINÉRIO DE OURO", 215), lookup[0].items())
        self.assertEqual(len(unique(image, "Collection.reduceToImage")), 1)
        # a ready class_id property skips the lookup
        ready = poststeps.occurrences_with_class_id(ee.FeatureCollection("projects/my-project/assets/occ"), table,
                                                    class_property="class_id")
        self.assertEqual([fn for fn, _ in invocations(ready) if fn == "Dictionary.get"], [])

    def test_asset_export_sends_the_expected_request_and_skips_existing(self):
        resource = mock.MagicMock()
        resource.projects().assets().get().execute.side_effect = [{"type": "IMAGE"}, http_error(404)]
        resource.projects().image().export().execute.return_value = {"name": "projects/my-project/operations/P1"}
        with apitestcase.UsingCloudApi(cloud_api_resource=resource):
            region = poststeps.grid_region([1200])
            image = poststeps.spatial_filter(self.classification())
            tasks = [poststeps.asset_export(image, "spatial", 2019, "projects/my-project/assets/mining/post/spatial_2019", region),
                     poststeps.asset_export(image, "spatial", 2020, "projects/my-project/assets/mining/post/spatial_2020", region)]
            outcomes = poststeps.start_tasks(tasks, report=lambda line: None)
        self.assertEqual([o.status for o in outcomes], ["skipped-existing", "started"])
        (body,) = [c.kwargs["body"] for c in resource.projects().image().export.call_args_list if c.kwargs]
        self.assertRegex(body.pop("requestId"), UUID)
        expression = body.pop("expression")
        self.assertEqual(body, {
            "description": "mining_spatial_2020",
            "assetExportOptions": {
                "earthEngineDestination": {"name": "projects/my-project/assets/mining/post/spatial_2020",
                                           "overwrite": False},
                "pyramidingPolicy": "MODE",
            },
            "maxPixels": {"value": "10000000000000"},
        })
        sent = ee.deserializer.decodeCloudApi(expression)
        (clip,) = unique(sent, "Image.clipToBoundsAndScale")
        self.assertEqual(const(clip["scale"]), 30)
        self.assertEqual(len(unique(sent, "Image.connectedPixelCount")), 1)

    def test_dry_run_command_writes_every_step(self):
        out = self.tmp / "post.json"
        code = main(["ee-poststeps", "--collection", COLLECTION, "--years", "2019-2020", "--steps",
                     "spatial,prevalence,class-id", "--dest", "projects/my-project/assets/mining/post", "--grids", "1200",
                     "--land-cover", "projects/mapbiomas-public/assets/lulc", "--occurrences",
                     "projects/my-project/assets/sigmine", "--filter-mode", "c9-code", "--dry-run", "--out", str(out)])
        self.assertEqual(code, 0)
        written = json.loads(out.read_text())
        self.assertEqual([(t["step"], t["year"]) for t in written],
                         [("spatial", 2019), ("prevalence", 2019), ("class-id", 2019),
                          ("spatial", 2020), ("prevalence", 2020), ("class-id", 2020)])
        self.assertEqual(written[4]["asset"], "projects/my-project/assets/mining/post/prevalence_2020")
        integrated = ee.deserializer.decodeCloudApi(written[4]["request"]["expression"])
        self.assertIn({"bandSelectors": {"constantValue": ["classification_2020"]}},
                      [{k: v for k, v in a.items() if k == "bandSelectors"} for a in unique(integrated, "Image.select")])
        self.assertEqual(len(unique(integrated, "Reducer.mode")), 1)  # chained after the c9-code spatial filter
        self.assertEqual(main(["ee-poststeps", "--collection", COLLECTION, "--years", "2020", "--steps", "prevalence",
                               "--dest", "projects/my-project/assets/x", "--grids", "1200", "--dry-run"]), 2)

    @pytest.fixture(autouse=True)
    def _tmp(self, tmp_path):
        self.tmp = tmp_path
