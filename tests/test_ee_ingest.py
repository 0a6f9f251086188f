"""COG ingestion into an Earth Engine ImageCollection, on the offline harness: the exact manifest and request,
skip / overwrite of existing assets, retries with backoff on 429 and 5xx only, dry runs, tags read from COGs."""
from __future__ import annotations

import json
from unittest import mock

import ee
import numpy as np
import pytest
from ee import apitestcase

from pipeline import __version__
from pipeline.cli import main
from pipeline.earthengine import auth, ingest, retry
from pipeline.errors import UserError
from tests.support.earthengine import Recorder, http_error

COLLECTION = "projects/my-project/assets/mining/c9"
OPTIONS = ingest.IngestOptions(COLLECTION, model="unet-c9", threshold=0.5, filter_mode="appendix", version="0.1.0")
NO_WAIT = retry.Backoff(retries=3, base_delay=1.0, jitter=0.0)
URI = "gs://bkt/out/1200/2020/mining.tif"


def expected_manifest(uri, grid, year, properties=None):
    """The ImageManifest DESIGN.md §1.7 / the issue ask for, written out in full."""
    return {
        "name": f"{COLLECTION}/mining_{grid}_{year}",
        "tilesets": [{"id": "cog", "sources": [{"uris": [uri]}]}],
        "bands": [{"id": "classification", "tilesetId": "cog", "tilesetBandIndex": 0}],
        "pyramidingPolicy": "MODE",
        "missingData": {"values": [255]},
        "properties": properties or {"grid": grid, "year": year, "model": "unet-c9", "threshold": 0.5,
                                     "filter_mode": "appendix", "version": "0.1.0"},
        "startTime": f"{year}-01-01T00:00:00Z",
        "endTime": f"{year + 1}-01-01T00:00:00Z",
    }


def import_bodies(resource):
    """Bodies of every image:import call made on a mocked Cloud API resource."""
    return [c.kwargs["body"] for c in resource.projects().image().import_.call_args_list if "body" in c.kwargs]


def mocked_resource(existing: dict | None = None):
    """Cloud API mock: assets.get answers `existing` (or 404), image:import answers an operation."""
    resource = mock.MagicMock()
    if existing is None:
        resource.projects().assets().get().execute.side_effect = http_error(404, "not found")
    else:
        resource.projects().assets().get().execute.return_value = existing
    resource.projects().image().import_().execute.return_value = {"name": "projects/my-project/operations/ING1"}
    return resource


def test_http_status_is_found_behind_earth_engine_exceptions():
    try:
        try:
            raise http_error(503)
        except Exception:  # noqa: BLE001 - mimic ee.data._execute_cloud_call
            raise ee.EEException("Service unavailable")  # noqa: B904 - implicit chaining, as the client does
    except ee.EEException as error:
        assert retry.http_status(error) == 503
        assert retry.is_retryable(error)
    assert retry.is_retryable(http_error(429))
    assert not retry.is_retryable(http_error(400))
    assert not retry.is_retryable(http_error(403))
    assert not retry.is_retryable(ee.EEException("Asset not found"))
    assert not retry.is_retryable(ValueError("bug"))
    assert [retry.Backoff(base_delay=2, max_delay=10, jitter=0).delay(k) for k in range(5)] == [2, 4, 8, 10, 10]
    assert 1.5 <= retry.Backoff(base_delay=2, jitter=0.25).delay(0, rng=lambda: 0.0) <= 2.5


def test_call_with_backoff_is_the_only_retry_layer(caplog):
    ee.data.setMaxRetries(5)
    sleeps, calls = [], []
    errors = [http_error(503), http_error(429), http_error(500)]

    def flaky():
        calls.append(1)
        raise errors[len(calls) - 1]

    policy = retry.Backoff(retries=2, base_delay=3.0, jitter=0.0)
    with caplog.at_level("WARNING", logger="pipeline.earthengine.retry"):
        with pytest.raises(type(errors[2])) as raised:
            retry.call_with_backoff(flaky, policy, what="get x", sleep=sleeps.append)
    assert raised.value is errors[2]  # the last retryable error, as raised
    assert (len(calls), sleeps) == (3, [3.0, 6.0])
    assert [r.getMessage().split(";")[1].strip() for r in caplog.records] == ["retry 1/2 in 3.0 s", "retry 2/2 in 6.0 s"]
    assert ee.data._get_state().max_retries == 0  # the client's own retries are off
    assert retry.call_with_backoff(lambda: 7, policy, sleep=sleeps.append) == 7
    with pytest.raises(ValueError, match="bug"):
        retry.call_with_backoff(lambda: (_ for _ in ()).throw(ValueError("bug")), policy, sleep=sleeps.append)
    assert sleeps == [3.0, 6.0]


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("gs://b/out/1200/2020/mining.tif", (1200, 2020)),
        ("gs://b/out/mining_1200_2020.tif", (1200, 2020)),
        ("gs://b/out/x/grid-7-1985.tif", (7, 1985)),
        ("/local/12/2001/a.tif", (12, 2001)),
    ],
)
def test_grid_and_year_from_the_path(uri, expected):
    assert ingest.parse_grid_year(uri) == expected


def test_unparseable_paths_name_the_uri():
    with pytest.raises(UserError, match="gs://b/out/mining.tif: cannot tell grid and year"):
        ingest.parse_grid_year("gs://b/out/mining.tif")
    with pytest.raises(UserError, match="out of range"):
        ingest.parse_grid_year("gs://b/out/9999/2020/a.tif")


def test_manifest_has_bands_mode_pyramids_missing_data_properties_and_times():
    item = ingest.make_item(URI, OPTIONS)
    assert ingest.build_manifest(item, OPTIONS) == expected_manifest(URI, 1200, 2020)
    three = ingest.IngestOptions(COLLECTION, "m", 0.4, "c9-code", "1", bands=("classification", "probability", "origin"))
    bands = ingest.build_manifest(ingest.make_item(URI, three), three)["bands"]
    assert bands == [{"id": b, "tilesetId": "cog", "tilesetBandIndex": i}
                     for i, b in enumerate(("classification", "probability", "origin"))]
    with pytest.raises(UserError, match=f"{URI}: no model"):
        ingest.make_item(URI, ingest.IngestOptions(COLLECTION, threshold=0.5, filter_mode="appendix", version="1"))
    with pytest.raises(UserError, match="not a user asset"):
        ingest.collection_name("LANDSAT/LC08/C02/T1_TOA")


class IngestRequestTest(apitestcase.ApiTestCase):
    def tearDown(self):
        super().tearDown()
        auth.reset()

    def test_ingestion_sends_exactly_the_expected_request(self):
        import httplib2

        sent = []

        def request(uri, method="GET", body=None, headers=None, **kwargs):
            sent.append((uri.split("?")[0], method, body))
            if method == "GET":
                return httplib2.Response({"status": 404}), b'{"error": {"code": 404, "message": "not found"}}'
            return httplib2.Response({"status": 200}), b'{"name": "projects/my-project/operations/ING1"}'

        http = mock.MagicMock(httplib2.Http)
        http.request.side_effect = request
        with apitestcase.UsingCloudApi(mock_http=http):
            outcomes = ingest.ingest([ingest.make_item(URI, OPTIONS)], OPTIONS, report=lambda line: None)
        base = "https://earthengine.googleapis.com/v1alpha/"
        self.assertEqual(
            [(u, m) for u, m, _ in sent],
            [(base + f"{COLLECTION}/mining_1200_2020", "GET"), (base + "projects/my-project/image:import", "POST")],
        )
        self.assertEqual(json.loads(sent[1][2]), {"imageManifest": expected_manifest(URI, 1200, 2020), "overwrite": False})
        self.assertEqual([(o.status, o.operation) for o in outcomes], [("started", "projects/my-project/operations/ING1")])

    def test_existing_assets_are_skipped_unless_overwrite(self):
        resource = mocked_resource(existing={"type": "IMAGE", "name": f"{COLLECTION}/mining_1200_2020"})
        lines = []
        with apitestcase.UsingCloudApi(cloud_api_resource=resource):
            outcomes = ingest.ingest([ingest.make_item(URI, OPTIONS)], OPTIONS, report=lines.append)
        self.assertEqual(outcomes[0].status, "skipped-existing")
        self.assertEqual(import_bodies(resource), [])
        self.assertIn("exists, skipped", lines[0])
        resource = mocked_resource(existing={"type": "IMAGE"})
        with apitestcase.UsingCloudApi(cloud_api_resource=resource):
            outcomes = ingest.ingest([ingest.make_item(URI, OPTIONS)], OPTIONS, overwrite=True, report=lambda line: None)
        self.assertEqual(outcomes[0].status, "started")
        self.assertEqual(import_bodies(resource), [{"imageManifest": expected_manifest(URI, 1200, 2020), "overwrite": True}])
        get_calls = [c for c in resource.projects().assets().get.call_args_list if c.kwargs]
        self.assertEqual(get_calls, [])  # overwrite does not even look

    def test_retries_on_429_and_5xx_only(self):
        ok = {"name": "projects/my-project/operations/ING2"}
        cases = [
            ([http_error(429), http_error(502), ok], 3, [1.0, 2.0], None),
            ([http_error(500)] * 4, 4, [1.0, 2.0, 4.0], "server says no"),
            ([http_error(400, "Invalid manifest")], 1, [], "Invalid manifest"),
            ([http_error(403, "Permission denied")], 1, [], "Permission denied"),
        ]
        for effects, attempts, sleeps, error in cases:
            resource = mocked_resource()
            resource.projects().image().import_().execute.side_effect = effects
            time = Recorder()
            with apitestcase.UsingCloudApi(cloud_api_resource=resource):
                def run(time=time):
                    return ingest.ingest([ingest.make_item(URI, OPTIONS)], OPTIONS, backoff=NO_WAIT,
                                         sleep=time.sleep, clock=time.clock, report=lambda line: None)
                if error:
                    with self.assertRaisesRegex(ee.EEException, error):
                        run()
                else:
                    self.assertEqual(run()[0].operation, "projects/my-project/operations/ING2")
            bodies = import_bodies(resource)
            self.assertEqual(len(bodies), attempts)
            self.assertTrue(all(b == bodies[0] for b in bodies))
            self.assertEqual(time.sleeps, sleeps)

    def test_asset_lookup_retries_too(self):
        resource = mocked_resource()
        resource.projects().assets().get().execute.side_effect = [http_error(503), http_error(404)]
        time = Recorder()
        with apitestcase.UsingCloudApi(cloud_api_resource=resource):
            outcomes = ingest.ingest([ingest.make_item(URI, OPTIONS)], OPTIONS, backoff=NO_WAIT, sleep=time.sleep,
                                     clock=time.clock, report=lambda line: None)
        self.assertEqual(outcomes[0].status, "started")
        self.assertEqual(time.sleeps, [1.0])

    def test_collection_is_created_when_missing(self):
        resource = mocked_resource()
        with apitestcase.UsingCloudApi(cloud_api_resource=resource):
            self.assertTrue(ingest.ensure_collection(OPTIONS))
        create = resource.projects().assets().create
        self.assertEqual(
            [c.kwargs for c in create.call_args_list if c.kwargs],
            [{"parent": "projects/my-project", "assetId": "mining/c9", "body": {"type": "IMAGE_COLLECTION"},
              "prettyPrint": False}],
        )
        resource = mocked_resource(existing={"type": "FOLDER"})
        with apitestcase.UsingCloudApi(cloud_api_resource=resource):
            with self.assertRaisesRegex(UserError, "is a FOLDER, not an ImageCollection"):
                ingest.ensure_collection(OPTIONS)

    def test_command_creates_collection_and_ingests(self):
        resource = mocked_resource()
        with apitestcase.UsingCloudApi(cloud_api_resource=resource), mock.patch.object(auth, "initialize"):
            code = main(["ingest", "--cogs", URI, "gs://bkt/out/1201/2021/mining.tif", "--collection", COLLECTION,
                         "--model", "unet-c9", "--threshold", "0.5", "--filter-mode", "appendix", "--rate", "1000"])
        self.assertEqual(code, 0)
        manifests = [b["imageManifest"] for b in import_bodies(resource)]
        version = {"version": __version__}
        self.assertEqual(manifests, [
            expected_manifest(URI, 1200, 2020, {**expected_manifest(URI, 1200, 2020)["properties"], **version}),
            expected_manifest("gs://bkt/out/1201/2021/mining.tif", 1201, 2021,
                              {**expected_manifest(URI, 1201, 2021)["properties"], **version}),
        ])


def write_cog(path, tags):
    """A small tiled GeoTIFF with dataset tags, as the pipeline's COG writer tags its outputs."""
    import rasterio
    from affine import Affine

    with rasterio.open(path, "w", driver="GTiff", width=32, height=32, count=1, dtype="uint8", nodata=255,
                       crs="EPSG:4326", transform=Affine(0.00027, 0, -55, 0, -0.00027, -6), tiled=True,
                       blockxsize=16, blockysize=16) as dataset:
        dataset.write(np.full((1, 32, 32), 30, np.uint8))
        dataset.update_tags(**tags)


def test_dry_run_writes_manifests_from_options_and_tags(tmp_path):
    out = tmp_path / "manifests.json"
    assert main(["ingest", "--cogs", URI, "--collection", COLLECTION, "--model", "unet-c9", "--threshold", "0.5",
                 "--filter-mode", "appendix", "--software-version", "0.1.0", "--dry-run", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == [
        {"uri": URI, "overwrite": False, "imageManifest": expected_manifest(URI, 1200, 2020)}
    ]
    cog = tmp_path / "1300" / "2015" / "mining.tif"
    cog.parent.mkdir(parents=True)
    write_cog(cog, {"GRID": "1300", "YEAR": "2015", "MODEL": "unet-c9", "THRESHOLD": "0.4",
                    "FILTER_MODE": "c9-code", "VERSION": "0.2.0"})
    listing = tmp_path / "cogs.txt"
    listing.write_text(f"# COGs\n{cog}\n")
    assert main(["ingest", "--cogs-list", str(listing), "--collection", COLLECTION, "--read-tags", "--dry-run",
                 "--overwrite", "--out", str(out)]) == 0
    (entry,) = json.loads(out.read_text())
    assert entry["overwrite"] is True
    assert entry["imageManifest"]["properties"] == {"grid": 1300, "year": 2015, "model": "unet-c9",
                                                    "threshold": 0.4, "filter_mode": "c9-code", "version": "0.2.0"}
    # a tag that disagrees with an option is an error naming the file
    assert main(["ingest", "--cogs", str(cog), "--collection", COLLECTION, "--read-tags", "--threshold", "0.5",
                 "--dry-run", "--out", str(out)]) == 2
    with pytest.raises(UserError, match=r"mining.tif: tag threshold='0.4' disagrees with 0.5"):
        ingest.make_item(str(cog), ingest.IngestOptions(COLLECTION, threshold=0.5), ingest.read_cog_tags(str(cog)))
