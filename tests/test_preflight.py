"""Fail fast on the cloud (issue 16, deliverable 5): every gs:// input and output is probed once before work
starts, against `gcp-storage-emulator`, an endpoint that refuses connections, one that never answers, missing
credentials and a well-formed key that cannot reach Earth Engine; each failure is one line within 30 s."""
from __future__ import annotations

import socket
import time

import pytest

from pipeline import preflight
from pipeline.earthengine import auth
from pipeline.errors import UserError
from tests.support.products import run_cli, write_raster
from tests.support.storage import storage_emulator

BOUND_S = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def storage_client():
    """`gcp-storage-emulator` with buckets mm-in (one object under maps/) and mm-out; clients pointed at it."""
    pytest.importorskip("gcp_storage_emulator")
    with storage_emulator(("mm-in", "mm-out")) as client:
        client.bucket("mm-in").blob("maps/a_2020.tif").upload_from_string(b"x")
        yield client


@pytest.fixture
def closed_endpoint(monkeypatch):
    """STORAGE_EMULATOR_HOST pointing at a local port nothing listens on: every connection is refused."""
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    return url


@pytest.fixture
def silent_endpoint(monkeypatch):
    """STORAGE_EMULATOR_HOST pointing at a socket that accepts connections and never answers."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    yield url
    server.close()


def fake_service_account_key(path):
    """A well-formed service-account key (a fresh RSA key; no Google account behind it)."""
    import json

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "my-project", "private_key_id": "0", "private_key": pem,
        "client_email": "nobody@my-project.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }))
    return path


def test_gcs_locations_are_probed_once_each_and_globs_cut_at_the_wildcard():
    assert preflight.gcs_locations(["gs://b/x/*.tif", "/local/a.tif", None, "gs://b/x/", "gs://b/y/a_[12].tif",
                                    "gs://b/x/*.tif"]) == ["gs://b/x/", "gs://b/y/a_"]


def test_readable_input_and_writable_output_pass_and_leave_no_probe_object(storage_client):
    preflight.probe_storage(["gs://mm-in/maps/*.tif", "/local/ignored.tif"], ["gs://mm-out/run1"], timeout=10)
    assert [b.name for b in storage_client.list_blobs("mm-out")] == []


def test_missing_bucket_is_refused_naming_the_path(storage_client):
    with pytest.raises(UserError, match=r"^gs://mm-absent/maps: the bucket does not exist"):
        preflight.probe_storage(["gs://mm-absent/maps"], [], timeout=10)


def test_refused_connection_is_one_line_naming_the_path_and_endpoint_at_once(closed_endpoint):
    started = time.monotonic()
    with pytest.raises(UserError) as error:
        preflight.probe_storage(["gs://mm-in/maps"], ["gs://mm-out/run"])
    assert time.monotonic() - started < 5
    message = str(error.value)
    assert message.startswith(f"gs://mm-in/maps: cannot reach Cloud Storage at {closed_endpoint}")
    assert "check the network" in message and "\n" not in message


def test_silent_endpoint_gives_up_at_the_deadline(silent_endpoint, monkeypatch):
    monkeypatch.setattr(preflight, "REQUEST_TIMEOUT_S", 60.0)  # only the overall deadline can stop it
    started = time.monotonic()
    with pytest.raises(UserError, match=r"^gs://mm-out/run: no answer from Cloud Storage at .* within 2 s"):
        preflight.probe_storage([], ["gs://mm-out/run"], timeout=2.0)
    assert time.monotonic() - started < 3.5


def test_no_credentials_is_one_line_saying_what_to_set(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    with pytest.raises(UserError, match=r"^gs://mm-out/run: no Google Cloud credentials to write to it: .*GOOGLE_APPLICATION_CREDENTIALS"):
        preflight.probe_storage([], ["gs://mm-out/run"], timeout=10)


def test_command_with_unreachable_output_fails_before_work_within_30_s(closed_endpoint, tmp_path):
    raster = write_raster(tmp_path / "a_2020.tif", [[30, 0], [0, 0]], nodata=255)
    started = time.monotonic()
    code, out, err = run_cli("stats", raster, "--output", "gs://mm-out/stats")
    assert time.monotonic() - started < BOUND_S
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith(f"mining-mapper stats: error: gs://mm-out/stats: cannot reach Cloud Storage at {closed_endpoint}")


def test_run_with_unreachable_exports_fails_before_the_pipeline_within_30_s(closed_endpoint, tmp_path, monkeypatch):
    import pipeline.run as run_module

    def trap(*args, **kwargs):
        raise AssertionError("the pipeline was built although Cloud Storage cannot be reached")

    monkeypatch.setattr(run_module, "MiningMapperJob", trap)
    started = time.monotonic()
    code, out, err = run_cli("run", "--exports", "gs://mm-in/exports", "--output", str(tmp_path / "out"),
                             "--model", str(tmp_path / "model.keras"), "--grids", "1", "--years", "2000")
    assert time.monotonic() - started < BOUND_S
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith(f"mining-mapper run: error: gs://mm-in/exports: cannot reach Cloud Storage at {closed_endpoint}")


def test_command_probes_the_paths_it_declares_before_it_runs(tmp_path, monkeypatch):
    probed = []
    monkeypatch.setattr(preflight, "probe_storage", lambda i, o, **k: probed.append((list(i), list(o))))
    raster = write_raster(tmp_path / "a_2020.tif", [[30, 0], [0, 0]], nodata=255)
    code, _, err = run_cli("stats", raster, "--output", tmp_path / "out", "--quiet")
    assert code == 0, err
    assert probed == [([str(raster)], [str(tmp_path / "out")])]


def test_earth_engine_key_that_cannot_reach_the_service_is_one_line_naming_the_key(tmp_path, monkeypatch):
    key = fake_service_account_key(tmp_path / "key.json")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens: no route out
    monkeypatch.setattr(auth, "initialize", lambda *a, **k: pytest.fail("the token must be checked first"))
    started = time.monotonic()
    code, _, err = run_cli("export", "--exports", "gs://b/e", "--years", "2020", "--grids", "1137", "--force",
                           "--service-account-key", key, "--project", "my-project")
    assert time.monotonic() - started < BOUND_S
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"mining-mapper export: error: {key}: cannot reach Earth Engine (")
    assert line.endswith("check the network, proxy and firewall")


def test_earth_engine_probe_that_hangs_gives_up_at_the_deadline(monkeypatch):
    monkeypatch.setattr(auth, "initialize", lambda *a, **k: time.sleep(30))
    started = time.monotonic()
    with pytest.raises(UserError, match=r"^Application Default Credentials: no answer from Earth Engine .* within 1 s"):
        preflight.probe_earth_engine(auth.EEConfig(project="p"), timeout=1.0)
    assert time.monotonic() - started < 2.5


def test_storage_with_a_well_formed_key_and_no_route_out_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(fake_service_account_key(tmp_path / "key.json")))
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens: no route out
    raster = write_raster(tmp_path / "a_2020.tif", [[30, 0], [0, 0]], nodata=255)
    started = time.monotonic()
    code, out, err = run_cli("stats", raster, "--output", "gs://mm-out/stats")
    assert time.monotonic() - started < BOUND_S
    assert code == 2 and out == ""
    lines = [line for line in err.strip().splitlines() if " WARNING " not in line]
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("mining-mapper stats: error: gs://mm-out/stats: cannot reach Cloud Storage at https://storage.googleapis.com")


@pytest.mark.parametrize("reuse, probed", [
    ("gs://mm-raw/raw", ["gs://mm-in/exports", "gs://mm-raw/raw"]),
    *[(word, ["gs://mm-in/exports"]) for word in ("", "off", "OFF", "none", "false", "no")],  # pipeline.io.raw.NO_REUSE
])
def test_run_probes_a_reuse_raw_folder_on_cloud_storage_and_no_word_for_off(monkeypatch, reuse, probed):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.run import probe_cloud_paths

    seen = []
    monkeypatch.setattr(preflight, "probe_storage", lambda inputs, outputs, project=None: seen.append(
        (preflight.gcs_locations(inputs), preflight.gcs_locations(outputs))))
    probe_cloud_paths(PipelineOptions(["--exports", "gs://mm-in/exports", "--output", "/tmp/out", "--model", "m.keras",
                                       "--reuse_raw", reuse]))
    assert seen == [(probed, [])]
