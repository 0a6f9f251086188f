"""Helpers shared by the tests of `pipeline.products` (issue 8): small rasters and running the CLI."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from pipeline.cli import main


def write_raster(path, array: np.ndarray, crs="EPSG:4326", transform=None, nodata=None, tags=None, descriptions=None) -> Path:
    """A small GeoTIFF (one band, or several for a 3-D array) for tests."""
    array = np.asarray(array)
    bands = array[None] if array.ndim == 2 else array
    transform = transform or Affine(0.01, 0, -50.0, 0, -0.01, 0.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=bands.shape[0],
        dtype=bands.dtype, crs=crs, transform=transform, nodata=nodata,
    ) as dst:
        dst.write(bands)
        if tags:
            dst.update_tags(**{k: str(v) for k, v in tags.items()})
        for i, text in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, text)
    return path


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run `mining-mapper ARGV…` in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def read(path, band: int = 1) -> np.ndarray:
    """Band `band` of a raster."""
    with rasterio.open(path) as src:
        return src.read(band)


@contextlib.contextmanager
def storage_emulator(buckets=("mm-products",)):
    """`gcp-storage-emulator` on a free port, with google-cloud-storage, Beam and GDAL's /vsigs/ pointed at it.

    Beam's credential lookup is short-circuited (no Application Default Credentials here), so it uses an
    anonymous client that honours STORAGE_EMULATOR_HOST; GDAL reads through CPL_GS_ENDPOINT, unsigned.
    Yields a storage client.
    """
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from apache_beam.internal.gcp import auth as beam_auth

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    saved_env = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "NO_GCE_CHECK", "CPL_GS_ENDPOINT", "GS_NO_SIGN_REQUEST")}
    saved_auth = (beam_auth._Credentials._credentials_init, beam_auth._Credentials._credentials)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b?project=test", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("gcp-storage-emulator did not start") from None
                time.sleep(0.1)
        os.environ.update(STORAGE_EMULATOR_HOST=url, NO_GCE_CHECK="true", CPL_GS_ENDPOINT=url + "/", GS_NO_SIGN_REQUEST="YES")
        beam_auth._Credentials._credentials_init, beam_auth._Credentials._credentials = True, None
        from google.cloud import storage

        client = storage.Client.create_anonymous_client()
        client.project = "mining-mapper-test"
        for name in buckets:
            client.create_bucket(name)
        yield client
    finally:
        beam_auth._Credentials._credentials_init, beam_auth._Credentials._credentials = saved_auth
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
