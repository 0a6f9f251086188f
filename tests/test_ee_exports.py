"""TFRecord exports (DESIGN.md §1.4, §2) on Earth Engine's offline harness: the exact request each export sends,
patch-aligned windows, resumable and rate-limited submission, retries on 429/5xx only, waiting with EE's error
text, dry runs, training patches; and the credentials / one-initialisation logic of `auth`."""
from __future__ import annotations

import json
import math
import unittest
from unittest import mock

import httplib2
import pytest
from ee import apitestcase

import ee
from pipeline.cli import main
from pipeline.earthengine import auth, exports, storage
from pipeline.earthengine.grid import C9_GRID
from pipeline.earthengine.retry import Backoff
from pipeline.errors import UserError
from tests.support.earthengine import UUID, Recorder, calls, const, http_error, invocations

PX = 30.0 / (6378137.0 * 2 * math.pi / 360)  # 30 m at the equator, in degrees
OPTIONS = exports.ExportOptions("gs://bkt/exp/c9")
NO_WAIT = Backoff(retries=3, base_delay=1.0, jitter=0.0)


class FakeBlob:
    def __init__(self, name):
        self.name = name


class FakeStorage:
    """list_blobs over a fixed set of object names, recording the prefixes asked for."""

    def __init__(self, names=()):
        self.names = list(names)
        self.prefixes = []

    def list_blobs(self, bucket, prefix="", **_options):
        self.prefixes.append((bucket, prefix))
        return [FakeBlob(n) for n in self.names if n.startswith(prefix)]


def expected_window(grid_id):
    """(west, north, width, height) computed here from the cell bounds: snapped outward, whole 256-px patches."""
    west, south, east, north = C9_GRID.bounds(grid_id)
    col0, row0 = math.floor(west / PX), math.ceil(north / PX)
    width = math.ceil((east - col0 * PX) / PX / 256) * 256
    height = math.ceil((row0 * PX - south) / PX / 256) * 256
    return col0 * PX, row0 * PX, width, height


def export_bodies(resource):
    """Bodies of every image:export call made on a mocked Cloud API resource."""
    return [c.kwargs["body"] for c in resource.projects().image().export.call_args_list if "body" in c.kwargs]


def mocked_resource(operations=()):
    """A mocked Cloud API resource: listOperations answers `operations`, export answers an operation."""
    resource = mock.MagicMock()
    resource.projects().operations().list().execute.return_value = {"operations": list(operations)}
    resource.projects().operations().list_next.return_value = None
    resource.projects().image().export().execute.return_value = {
        "name": "projects/my-project/operations/OP1",
        "metadata": {},
    }
    return resource


def test_windows_cover_cells_with_whole_patches_on_one_lattice():
    for grid_id in (1, 1200, 1201, 1251, 2601):
        window = exports.cell_window(grid_id)
        west, south, east, north = C9_GRID.bounds(grid_id)
        assert window.pixel == pytest.approx(PX, rel=1e-15)
        assert window.width % 256 == 0 and window.height % 256 == 0
        w, s, e, n = window.bounds
        assert w <= west and n >= north and e >= east and s <= south
        assert (e - east) / PX < 256 + 1 and (south - s) / PX < 256 + 1  # padding only, less than one patch
        assert (west - w) / PX < 1 and (n - north) / PX < 1  # snapped by less than a pixel
        assert (window.west, window.north, window.width, window.height) == pytest.approx(expected_window(grid_id))
        assert window.crs_transform == pytest.approx([PX, 0, window.west, 0, -PX, window.north])
    # the eastern neighbour's pixels line up with this cell's
    a, b = exports.cell_window(1200), exports.cell_window(1251)
    assert (b.west - a.west) / PX == pytest.approx(round((b.west - a.west) / PX), abs=1e-6)


class ExportRequestTest(apitestcase.ApiTestCase):
    def tearDown(self):
        super().tearDown()
        auth.reset()

    def test_export_sends_exactly_the_expected_request(self):
        sent = []

        def request(uri, method="GET", body=None, headers=None, **kwargs):
            sent.append((uri, method, body))
            if uri.split("?")[0].endswith("/operations"):
                return httplib2.Response({"status": 200}), b"{}"
            return httplib2.Response({"status": 200}), json.dumps(
                {"name": "projects/my-project/operations/EXPORT1", "metadata": {"state": "PENDING"}}
            ).encode()

        http = mock.MagicMock(httplib2.Http)
        http.request.side_effect = request
        with apitestcase.UsingCloudApi(mock_http=http):
            spec = exports.mosaic_export(1200, 2020, OPTIONS)
            outcomes = exports.submit_exports([spec], FakeStorage(), report=lambda line: None)
        self.assertEqual([o.status for o in outcomes], ["submitted"])
        self.assertEqual(outcomes[0].operation, "projects/my-project/operations/EXPORT1")
        (uri, method, body), = [s for s in sent if ":export" in s[0]]
        self.assertEqual(method, "POST")
        self.assertEqual(uri.split("?")[0], "https://earthengine.googleapis.com/v1alpha/projects/my-project/image:export")
        body = json.loads(body)
        self.assertRegex(body.pop("requestId"), UUID)
        expression = body.pop("expression")
        self.assertEqual(
            body,
            {
                "description": "mining_mosaic_1200_2020",
                "fileExportOptions": {
                    "fileFormat": "TF_RECORD_IMAGE",
                    "cloudStorageDestination": {"bucket": "bkt", "filenamePrefix": "exp/c9/1200/2020/1200_2020"},
                    "tfRecordOptions": {
                        "tileDimensions": {"width": 256, "height": 256},
                        "marginDimensions": {"width": 256, "height": 256},
                        "compress": True,
                        "maxSizeBytes": {"value": str(100 * 2**20)},
                        "defaultValue": 0,
                    },
                },
                "maxPixels": {"value": "10000000000000"},
            },
        )
        # the expression sent is the task's image, reprojected onto the window and clipped to whole patches
        self.assertEqual(expression, ee.serializer.encode(spec.task.config["expression"], for_cloud_api=True))
        image = ee.deserializer.decodeCloudApi(expression)
        west, north, width, height = expected_window(1200)
        clip = calls(image, "Image.clipToBoundsAndScale")
        self.assertEqual(len(clip), 1)
        rectangle = clip[0]["geometry"]["functionInvocationValue"]
        self.assertEqual(const(rectangle["arguments"]["coordinates"]), [0, 0, width, height])
        self.assertEqual((width, height), (3328, 3328))
        (transform,) = {tuple(const(a["crsTransform"])) for a in calls(image, "Image.reproject")}
        self.assertEqual(transform, pytest.approx((PX, 0, west, 0, -PX, north)))
        loads = {const(a["id"]) for a in calls(image, "ImageCollection.load")}
        self.assertEqual(loads, {"LANDSAT/LC08/C02/T1_TOA", "LANDSAT/LC09/C02/T1_TOA"})
        self.assertEqual(
            {tuple(const(a["names"])) for fn, a in invocations(image) if fn == "Image.rename" and "names" in a
             and a["input"].get("functionInvocationValue", {}).get("functionName") == "Image.toByte"},
            {("swir1", "nir", "red", "mndwi", "ndvi", "ndsi")},
        )

    def test_resume_skips_complete_and_active_exports(self):
        running = {
            "name": "projects/my-project/operations/RUN1",
            "metadata": {"state": "RUNNING", "description": "mining_mosaic_1200_2021"},
        }
        done = {"name": "projects/my-project/operations/OLD", "metadata": {"state": "SUCCEEDED",
                                                                           "description": "mining_mosaic_1200_2020"}}
        resource = mocked_resource([running, done])
        bucket = FakeStorage(["exp/c9/1200/2019/1200_2019-00000.tfrecord.gz", "exp/c9/1200/2019/1200_2019-mixer.json",
                              "exp/c9/1200/2020/1200_2020-00000.tfrecord.gz"])
        lines, time = [], Recorder()
        with apitestcase.UsingCloudApi(cloud_api_resource=resource):
            specs = exports.mosaic_exports([1200], [2019, 2020, 2021], OPTIONS)
            outcomes = exports.submit_exports(specs, bucket, report=lines.append, sleep=time.sleep, clock=time.clock)
        self.assertEqual([o.status for o in outcomes], ["skipped-complete", "submitted", "skipped-active"])
        self.assertEqual(outcomes[2].operation, "projects/my-project/operations/RUN1")
        self.assertEqual([b["description"] for b in export_bodies(resource)], ["mining_mosaic_1200_2020"])
        self.assertIn(("bkt", "exp/c9/1200/2019/1200_2019"), bucket.prefixes)
        self.assertIn("complete in gs://bkt/exp/c9/1200/2019/, skipped", lines[0])
        # --force: nothing is checked, everything is submitted
        resource = mocked_resource([running])
        with apitestcase.UsingCloudApi(cloud_api_resource=resource):
            specs = exports.mosaic_exports([1200], [2019, 2020, 2021], OPTIONS)
            outcomes = exports.submit_exports(specs, None, skip_complete=False, skip_active=False,
                                              report=lambda line: None, sleep=time.sleep, clock=time.clock)
        self.assertEqual([o.status for o in outcomes], ["submitted"] * 3)

    def test_retries_429_and_5xx_with_the_same_request_id(self):
        resource = mocked_resource()
        ok = {"name": "projects/my-project/operations/OP9", "metadata": {}}
        resource.projects().image().export().execute.side_effect = [http_error(429), http_error(503), ok]
        time = Recorder()
        with apitestcase.UsingCloudApi(cloud_api_resource=resource):
            spec = exports.mosaic_export(1200, 2020, OPTIONS)
            outcomes = exports.submit_exports([spec], FakeStorage(), backoff=NO_WAIT, sleep=time.sleep,
                                              clock=time.clock, report=lambda line: None)
        self.assertEqual(outcomes[0].operation, "projects/my-project/operations/OP9")
        bodies = export_bodies(resource)
        self.assertEqual(len(bodies), 3)
        self.assertEqual(len({b["requestId"] for b in bodies}), 1)
        self.assertEqual(time.sleeps, [1.0, 2.0])
        # One retry layer: the client's own (googleapiclient's num_retries) is switched off.
        executes = resource.projects().image().export().execute.call_args_list
        self.assertEqual([c.kwargs.get("num_retries") for c in executes], [0, 0, 0])

    def test_other_errors_are_not_retried_and_retries_end(self):
        for status, attempts in ((400, 1), (403, 1), (404, 1), (500, 4)):
            resource = mocked_resource()
            resource.projects().image().export().execute.side_effect = http_error(status, f"error {status}")
            time = Recorder()
            with apitestcase.UsingCloudApi(cloud_api_resource=resource):
                spec = exports.mosaic_export(1200, 2020, OPTIONS)
                with self.assertRaisesRegex(ee.EEException, f"error {status}"):
                    exports.submit_exports([spec], FakeStorage(), backoff=NO_WAIT, sleep=time.sleep,
                                           clock=time.clock, report=lambda line: None)
            self.assertEqual(len(export_bodies(resource)), attempts, status)
            self.assertEqual(time.sleeps, [1.0, 2.0, 4.0][: attempts - 1])

    def test_submission_is_rate_limited(self):
        resource = mocked_resource()
        time = Recorder()
        with apitestcase.UsingCloudApi(cloud_api_resource=resource):
            specs = exports.mosaic_exports([1200, 1201], [2020, 2021], OPTIONS)
            exports.submit_exports(specs, FakeStorage(), per_second=0.5, sleep=time.sleep, clock=time.clock,
                                   report=lambda line: None)
        self.assertEqual(time.sleeps, [2.0, 2.0, 2.0])
        self.assertEqual(len(export_bodies(resource)), 4)

    def test_wait_polls_and_reports_failures_with_earth_engine_text(self):
        message = "Image.select: Pattern 'B6' did not match any bands."
        first = {"operations": [
            {"name": "op/A", "metadata": {"state": "RUNNING", "description": "mining_mosaic_1200_2019"}},
            {"name": "op/B", "metadata": {"state": "PENDING", "description": "mining_mosaic_1200_2020"}},
        ]}
        second = {"operations": [
            {"name": "op/A", "done": True, "metadata": {"state": "SUCCEEDED", "description": "mining_mosaic_1200_2019"}},
            {"name": "op/B", "done": True, "error": {"code": 3, "message": message},
             "metadata": {"state": "FAILED", "description": "mining_mosaic_1200_2020"}},
        ]}
        resource = mock.MagicMock()
        resource.projects().operations().list().execute.side_effect = [first, second]
        resource.projects().operations().list_next.return_value = None
        time, lines = Recorder(), []
        with apitestcase.UsingCloudApi(cloud_api_resource=resource):
            result = exports.wait_for_operations(["op/A", "op/B"], poll_seconds=30, sleep=time.sleep,
                                                 clock=time.clock, report=lines.append)
        self.assertEqual(result.failures, {"op/B": message})
        self.assertEqual(result.states, {"op/A": "SUCCEEDED", "op/B": "FAILED"})
        self.assertEqual(time.sleeps, [30])
        self.assertEqual(lines[0], "0/2 finished (1 pending, 1 running)")
        self.assertIn(f"mining_mosaic_1200_2020: FAILED: {message}", lines)
        self.assertEqual(lines[-1], "2/2 finished (1 failed, 1 succeeded)")

    def test_dry_run_writes_the_exact_requests(self):
        out = self.tmp / "tasks.json"
        code = main(["export", "--exports", "gs://bkt/exp/c9", "--years", "2019-2020", "--grids", "1200",
                     "--dry-run", "--out", str(out)])
        self.assertEqual(code, 0)
        written = json.loads(out.read_text())
        self.assertEqual([(t["grid"], t["year"], t["kind"]) for t in written], [(1200, 2019, "mosaic"), (1200, 2020, "mosaic")])
        for task in written:
            expected = exports.mosaic_export(task["grid"], task["year"], OPTIONS).request()
            self.assertEqual(task["request"], json.loads(json.dumps(expected)))
            self.assertEqual(task["destination"], f"gs://bkt/exp/c9/1200/{task['year']}/")

    def test_dry_run_carries_the_chosen_export_geometry(self):
        out = self.tmp / "tasks.json"
        code = main(["export", "--exports", "gs://bkt/exp/c9", "--years", "2020", "--grids", "1200",
                     "--patch-size", "1024", "--kernel", "192", "--dry-run", "--out", str(out)])
        self.assertEqual(code, 0)
        (task,) = json.loads(out.read_text())
        record = task["request"]["fileExportOptions"]["tfRecordOptions"]
        self.assertEqual(record["tileDimensions"], {"height": 1024, "width": 1024})
        self.assertEqual(record["marginDimensions"], {"height": 192, "width": 192})

    def test_training_export_from_sample_polygons(self):
        west, south, east, north = C9_GRID.bounds(1200)
        step = 256 * PX
        cell = exports.cell_window(1200)

        def square(x, y, size):
            return [[[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]]

        # one mining polygon straddling a patch corner, one not-mining polygon far away, one outside the grid
        corner_x, corner_y = cell.west + 3 * step, cell.north - 5 * step
        features = [
            {"type": "Feature", "properties": {"label": 1}, "geometry": {"type": "Polygon",
             "coordinates": square(corner_x - 0.01, corner_y - 0.01, 0.02)}},
            {"type": "Feature", "properties": {"label": 0}, "geometry": {"type": "Polygon",
             "coordinates": square(cell.west + 8.5 * step, cell.north - 9.5 * step, 0.01)}},
            {"type": "Feature", "properties": {"label": 0}, "geometry": {"type": "Polygon",
             "coordinates": square(-79.0, 0.0, 0.01)}},
        ]
        path = self.tmp / "samples.geojson"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        samples = exports.read_samples(path)
        specs = exports.training_exports(samples, [2020], OPTIONS, grid_ids=[1200])
        self.assertEqual(len(specs), 1)
        spec = specs[0]
        request = spec.request()
        options = request["fileExportOptions"]
        self.assertEqual(options["cloudStorageDestination"]["filenamePrefix"], "exp/c9/1200/2020/training_1200_2020")
        self.assertEqual(options["tfRecordOptions"]["maxMaskedRatio"], {"value": 0.99})
        # patches touched: rows 4-5 x cols 2-3 around the corner, and row 9 x col 8 → window rows 4-9, cols 2-8
        image = spec.task.config["expression"]
        clip = calls(image, "Image.clipToBoundsAndScale")[0]["geometry"]["functionInvocationValue"]
        self.assertEqual(const(clip["arguments"]["coordinates"]), [0, 0, 7 * 256, 6 * 256])
        (transform,) = {tuple(const(a["crsTransform"])) for a in calls(image, "Image.reproject")}
        self.assertEqual(transform, pytest.approx((PX, 0, cell.west + 2 * step, 0, -PX, cell.north - 4 * step)))
        paints = {json.dumps(a, sort_keys=True) for a in calls(image, "Image.paint")}
        self.assertEqual(len(paints), 2)  # the label and the patch footprint
        self.assertIn(["label"], [const(a.get("names")) for a in calls(image, "Image.rename")])
        self.assertEqual(exports.touched_patches(cell, samples.geometries[:2]),
                         [(4, 2), (4, 3), (5, 2), (5, 3), (9, 8)])
        bad = self.tmp / "bad.geojson"
        features[0]["properties"]["label"] = 2
        bad.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        with self.assertRaisesRegex(UserError, "bad.geojson: feature 0: label=2"):
            exports.read_samples(bad)

    def test_command_submits_resumably_and_waits(self):
        resource = mocked_resource()
        failed = {"operations": [{
            "name": "projects/my-project/operations/OP1", "done": True, "error": {"message": "Computation timed out."},
            "metadata": {"state": "FAILED", "description": "mining_mosaic_1200_2020"},
        }]}
        resource.projects().operations().list().execute.side_effect = [{"operations": []}, failed]
        bucket = FakeStorage(["exp/c9/1200/2019/1200_2019-mixer.json"])
        with apitestcase.UsingCloudApi(cloud_api_resource=resource), \
                mock.patch.object(auth, "initialize") as initialize, \
                mock.patch.object(storage, "default_client", return_value=bucket):
            code = main(["export", "--exports", "gs://bkt/exp/c9", "--years", "2019-2020", "--grids", "1200",
                         "--wait", "--poll-seconds", "0", "--project", "my-project", "--high-volume"])
        self.assertEqual(code, 1)
        initialize.assert_called_once_with(auth.EEConfig(project="my-project", high_volume=True))
        self.assertEqual([b["description"] for b in export_bodies(resource)], ["mining_mosaic_1200_2020"])
        out = self.capsys.readouterr().out
        self.assertIn("1 skipped-complete, 1 submitted", out)
        self.assertIn("mining_mosaic_1200_2020: FAILED: Computation timed out.", out)

    @pytest.fixture(autouse=True)
    def _tmp(self, tmp_path, capsys):
        self.tmp = tmp_path
        self.capsys = capsys


@pytest.fixture
def emulated_bucket(monkeypatch):
    """A gcp-storage-emulator server with bucket 'bkt' and a google-cloud-storage client pointed at it."""
    from gcp_storage_emulator.server import create_server
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    server = create_server("localhost", 0, in_memory=True, default_bucket="bkt")
    server.start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://localhost:{server._api._httpd.server_address[1]}")
        yield gcs.Client(project="test", credentials=AnonymousCredentials())
    finally:
        server.stop()


def test_complete_exports_are_found_in_a_real_bucket_api(emulated_bucket):
    bucket = emulated_bucket.bucket("bkt")
    for name in ("exp/1200/2020/1200_2020-00000.tfrecord.gz", "exp/1200/2020/1200_2020-mixer.json",
                 "exp/1200/2021/1200_2021-00000.tfrecord.gz", "exp/1200/20210/x-mixer.json"):
        bucket.blob(name).upload_from_string(b"x")
    assert storage.export_is_complete(emulated_bucket, "bkt", "exp/1200/2020")
    assert storage.export_is_complete(emulated_bucket, "bkt", "exp/1200/2020", "1200_2020")
    assert not storage.export_is_complete(emulated_bucket, "bkt", "exp/1200/2020", "training_1200_2020")
    assert not storage.export_is_complete(emulated_bucket, "bkt", "exp/1200/2021")  # shards but no mixer yet
    assert storage.list_uris(emulated_bucket, "gs://bkt/exp/1200", (".gz",)) == [
        "gs://bkt/exp/1200/2020/1200_2020-00000.tfrecord.gz",
        "gs://bkt/exp/1200/2021/1200_2021-00000.tfrecord.gz",
    ]


def test_export_options_are_validated():
    with pytest.raises(UserError, match="not a Cloud Storage URI"):
        exports.ExportOptions("/local/dir")
    with pytest.raises(UserError, match="kernel"):
        exports.ExportOptions("gs://b/x", kernel=255)
    assert main(["export", "--exports", "gs://b/x", "--years", "2020", "--dry-run"]) == 2  # no grids named


class AuthTest(unittest.TestCase):
    def setUp(self):
        auth.reset()

    def tearDown(self):
        auth.reset()

    def test_adc_initialises_once_per_process_with_high_volume_option(self):
        credentials = mock.Mock(quota_project_id=None)
        with mock.patch("google.auth.default", return_value=(credentials, "adc-project")) as default, \
                mock.patch.object(ee, "Initialize") as initialize:
            auth.initialize(auth.EEConfig(project="my-project", high_volume=True))
            auth.initialize(auth.EEConfig(project="my-project", high_volume=True))
            initialize.assert_called_once_with(credentials, url=auth.HIGH_VOLUME_URL, project="my-project")
            self.assertEqual(default.call_args.kwargs["scopes"], ee.oauth.SCOPES)
            auth.initialize(auth.EEConfig())  # a different configuration initialises again: ADC project
            self.assertEqual(initialize.call_args, mock.call(credentials, url=None, project="adc-project"))
            self.assertEqual(initialize.call_count, 2)

    def test_service_account_key_file(self):
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            key = Path(tmp) / "key.json"
            key.write_text(json.dumps({"type": "service_account", "client_email": "sa@p.iam.gserviceaccount.com",
                                       "project_id": "key-project"}))
            with mock.patch.object(ee, "ServiceAccountCredentials", return_value="SA") as make, \
                    mock.patch.object(ee, "Initialize") as initialize, mock.patch("google.auth.default") as default:
                auth.initialize(auth.EEConfig(service_account_key=str(key)))
            make.assert_called_once_with("sa@p.iam.gserviceaccount.com", key_file=str(key))
            initialize.assert_called_once_with("SA", url=None, project="key-project")
            default.assert_not_called()
            auth.reset()
            key.write_text(json.dumps({"type": "authorized_user"}))
            with self.assertRaisesRegex(UserError, "key.json: not a service-account key file"):
                auth.initialize(auth.EEConfig(service_account_key=str(key)))
            with self.assertRaisesRegex(UserError, "missing.json: cannot read"):
                auth.initialize(auth.EEConfig(service_account_key=str(Path(tmp) / "missing.json")))

    def test_missing_adc_is_a_clear_error(self):
        import google.auth.exceptions

        with mock.patch("google.auth.default", side_effect=google.auth.exceptions.DefaultCredentialsError("none")):
            with self.assertRaisesRegex(UserError, "gcloud auth application-default login"):
                auth.initialize(auth.EEConfig(project="my-project"))

    def test_options_build_the_config(self):
        import argparse

        parser = argparse.ArgumentParser()
        auth.add_arguments(parser)
        args = parser.parse_args(["--project", "p", "--high-volume", "--service-account-key", "k.json"])
        self.assertEqual(auth.config_from_args(args), auth.EEConfig("p", "k.json", True))
