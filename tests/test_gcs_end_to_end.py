"""The pipeline end to end on `gs://` paths, against `gcp-storage-emulator` (DESIGN.md §7), and the GPU guard.

An emulator process serves the Cloud Storage JSON API on a free localhost port; with `STORAGE_EMULATOR_HOST`
set, google-cloud-storage (which Beam 2.77's `gs://` filesystem is built on, `apache_beam/io/gcp/gcsio.py`)
sends every request there. The exports made by `tests.support.synthetic_run.write_exports` and the stand-in model are
uploaded to one bucket, the pipeline runs on the FnApiRunner with `gs://` paths only, and the COGs it writes
to another bucket are downloaded and compared pixel by pixel with the filter engine run on the whole raster.

One setting is needed for an emulator: Beam looks for Application Default Credentials before it builds its
storage client (`apache_beam/internal/gcp/auth.py`: `google.auth.default`, retried four times with backoff,
about 24 s here, and probing the Compute Engine metadata server unless NO_GCE_CHECK is set). An emulator needs
no credentials, so the test records in Beam's credential cache that there are none: Beam then builds
`storage.Client.create_anonymous_client()`, which honours `STORAGE_EMULATOR_HOST`. On Dataflow the workers'
service account is found as usual; nothing in the pipeline code changes.
"""
from __future__ import annotations

import io
import socket
import time

import numpy as np
import pytest
import rasterio

from pipeline.errors import UserError
from pipeline.method.filters import FilterParams
from pipeline.run import run
from tests.support.storage import emulator_process, upload_tree
from tests.support.synthetic_run import YEARS, expected_cog, pipeline_args, stand_in_model, truth_stack, write_exports

EXPORTS_BUCKET = "mm-exports"
OUTPUT_BUCKET = "mm-results"
MODEL_BUCKET = "mm-models"


@pytest.fixture(scope="module")
def emulator():
    """A `gcp-storage-emulator` subprocess (in-memory) on a free localhost port; yields its base URL."""
    with emulator_process() as url:
        yield url


@pytest.fixture
def gcs(emulator, monkeypatch):
    """A google-cloud-storage client on the emulator, with Beam pointed at it too (see the module docstring).

    While the test runs, every TCP connection from this process to anything but loopback is refused and
    recorded, and the test fails if there was one: whatever was read or written went to the emulator.
    """
    from apache_beam.internal.gcp import auth as beam_auth
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    # No Application Default Credentials to look for: Beam uses an anonymous client on the emulator.
    monkeypatch.setattr(beam_auth._Credentials, "_credentials_init", True)
    monkeypatch.setattr(beam_auth._Credentials, "_credentials", None)
    outside: list = []
    connect = socket.socket.connect

    def loopback_only(sock, address):
        host = address[0] if isinstance(address, tuple) else None
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not (
                host == "localhost" or host == "::1" or str(host).startswith("127.")):
            outside.append(address)
            raise OSError(f"test: connection to {address} refused; only the emulator on localhost may be reached")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    client = storage.Client.create_anonymous_client()
    client.project = "mining-mapper-test"
    for name in (EXPORTS_BUCKET, OUTPUT_BUCKET, MODEL_BUCKET):
        if client.lookup_bucket(name) is None:
            client.create_bucket(name)
    yield client
    assert outside == [], f"connections outside the emulator: {outside}"


def test_beam_gcs_filesystem_talks_to_the_emulator(gcs, emulator):
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.io.gcp import gcsio

    gcs.bucket(EXPORTS_BUCKET).blob("probe/hello.txt").upload_from_string(b"from the emulator")
    client = gcsio.GcsIO().client
    assert client._connection.API_BASE_URL == emulator
    assert FileSystems.exists(f"gs://{EXPORTS_BUCKET}/probe/hello.txt")
    assert not FileSystems.exists(f"gs://{EXPORTS_BUCKET}/probe/absent.txt")
    with FileSystems.open(f"gs://{EXPORTS_BUCKET}/probe/hello.txt") as handle:
        assert handle.read() == b"from the emulator"
    with FileSystems.create(f"gs://{OUTPUT_BUCKET}/probe/written.txt") as handle:
        handle.write(b"by beam")
    assert gcs.bucket(OUTPUT_BUCKET).blob("probe/written.txt").download_as_bytes() == b"by beam"


@pytest.mark.parametrize("mode", ["appendix", "c9-code"])
def test_pipeline_reads_and_writes_gs_paths(gcs, tmp_path, mode):
    stack = truth_stack(11)
    write_exports(tmp_path / "exports", stack)
    uploaded = upload_tree(gcs, tmp_path / "exports", EXPORTS_BUCKET, f"{mode}/exports")
    assert len(uploaded) == len(YEARS) * 3  # a mixer and two shards per year
    model_local = stand_in_model(str(tmp_path / "stand_in.keras"))
    gcs.bucket(MODEL_BUCKET).blob(f"{mode}/stand_in.keras").upload_from_filename(model_local)

    output = f"gs://{OUTPUT_BUCKET}/{mode}/cogs"
    summary = run(pipeline_args(f"gs://{EXPORTS_BUCKET}/{mode}/exports", output,
                               f"gs://{MODEL_BUCKET}/{mode}/stand_in.keras", "--filter_mode", mode))
    assert summary["counts"] == {"written": len(YEARS)}
    assert summary["output"] == output

    bucket = gcs.bucket(OUTPUT_BUCKET)
    names = sorted(blob.name for blob in gcs.list_blobs(OUTPUT_BUCKET, prefix=f"{mode}/cogs/"))
    expected_names = sorted([f"{mode}/cogs/1010/1010_{y}.tif" for y in YEARS] + [f"{mode}/cogs/raw/1010/1010_{y}.tif" for y in YEARS]
                            + [f"{mode}/cogs/summary.json", f"{mode}/cogs/dead_letter.jsonl"])
    assert names == expected_names  # no partial/temporary object left behind
    expected = expected_cog(stack, FilterParams(mode=mode))
    for t, year in enumerate(YEARS):
        data = bucket.blob(f"{mode}/cogs/1010/1010_{year}.tif").download_as_bytes()
        with rasterio.MemoryFile(io.BytesIO(data)) as memory, memory.open() as cog:
            classes = cog.read(1)
            assert cog.tags()["year"] == str(year) and cog.tags()["filter_mode"] == mode
            assert cog.crs.to_epsg() == 4326
        assert (classes == expected[t]).all(), f"{mode} {year}: {np.argwhere(classes != expected[t])[:5]}"

    # The yearly update on gs://: a re-run re-uses every raw result, except the year whose export object
    # was uploaded again (a new generation), and writes the same COGs.
    first = {year: bucket.blob(f"{mode}/cogs/1010/1010_{year}.tif").download_as_bytes() for year in YEARS}
    touched = f"{mode}/exports/1010/{YEARS[2]}/mining_1010_{YEARS[2]}-00001.tfrecord.gz"
    time.sleep(1.1)  # the object's update time has a resolution of a second or finer
    gcs.bucket(EXPORTS_BUCKET).blob(touched).upload_from_filename(str(tmp_path / "exports" / touched.split("/exports/", 1)[1]))
    again = run(pipeline_args(f"gs://{EXPORTS_BUCKET}/{mode}/exports", output,
                             f"gs://{MODEL_BUCKET}/{mode}/stand_in.keras", "--filter_mode", mode, "--overwrite"))
    assert again["inference"] == {"inferred": 1, "reused": len(YEARS) - 1}
    assert again["metrics"]["patches_read"] == again["metrics"]["patches_inferred"] + again["metrics"].get("patches_not_observed", 0) == 6
    status = {entry["year"]: entry for entry in again["grid_years"]}
    assert status[YEARS[2]]["inference"] == "inferred" and "fingerprint differs" in status[YEARS[2]]["inference_reason"]
    assert {year: bucket.blob(f"{mode}/cogs/1010/1010_{year}.tif").download_as_bytes() for year in YEARS} == first


def test_check_gpu_raises_a_clear_error_without_a_gpu():
    import tensorflow as tf

    from model.gpu import check_gpu

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: the no-GPU error cannot be provoked")
    with pytest.raises(UserError, match=r"--require_gpu true.*no GPU"):
        check_gpu(True)
    check_gpu(False)  # not requested: no error


def test_require_gpu_fails_before_reading_anything(tmp_path, monkeypatch):
    import tensorflow as tf

    import pipeline.run as run_module

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: the no-GPU error cannot be provoked")
    from apache_beam.io.filesystems import FileSystems

    def trap(*args, **kwargs):
        raise AssertionError("the pipeline started reading although no GPU is visible")

    # Traps on every way the run could read or write: Beam's filesystems, the export reader, the pipeline.
    monkeypatch.setattr(run_module, "MiningMapperJob", trap)
    monkeypatch.setattr(run_module.beam, "Pipeline", trap)
    for name in ("match", "open", "create", "exists"):
        monkeypatch.setattr(FileSystems, name, trap)
    exports = tmp_path / "exports"
    exports.mkdir()
    with pytest.raises(UserError, match="no GPU"):
        run_module.run(pipeline_args(exports, tmp_path / "out", str(tmp_path / "absent.keras"),
                                     "--grids", "1010", "--years", "2000-2001", "--require_gpu", "true"))
    assert not (tmp_path / "out").exists()
    assert run_module.main(pipeline_args(exports, tmp_path / "out", str(tmp_path / "absent.keras"),
                                         "--grids", "1010", "--years", "2000-2001", "--require_gpu", "true")) == 2
    # Without --grids and --years the exports would be listed: the check still comes first.
    with pytest.raises(UserError, match="no GPU"):
        run_module.run(pipeline_args(exports, tmp_path / "out", str(tmp_path / "absent.keras"), "--require_gpu", "true"))


def test_workers_check_for_a_gpu_when_they_load_the_model(tmp_path):
    """On Dataflow the launcher has no GPU by design: the check runs where the model is loaded."""
    import tensorflow as tf

    from transforms.inference import PatchModelHandler

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: the no-GPU error cannot be provoked")
    with pytest.raises(UserError, match="no GPU"):
        PatchModelHandler(str(tmp_path / "absent.keras"), threshold=0.5, require_gpu=True).load_model()
