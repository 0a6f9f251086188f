"""`gcp-storage-emulator` for the tests that read and write `gs://` paths: one process starter, and a
context that also points google-cloud-storage, Beam and GDAL's /vsigs/ at it.

Beam looks for Application Default Credentials before it builds its storage client; an emulator needs none, so
`storage_emulator` records in Beam's credential cache that there are none and Beam builds an anonymous client,
which honours STORAGE_EMULATOR_HOST (see tests/test_gcs_end_to_end.py's docstring).
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest


def upload_tree(client, local_root, bucket: str, prefix: str) -> list[str]:
    """Upload every file under `local_root` to gs://bucket/prefix/…; returns the object names."""
    names = []
    for folder, _, files in os.walk(local_root):
        for name in sorted(files):
            path = os.path.join(folder, name)
            blob_name = f"{prefix}/{os.path.relpath(path, local_root)}".replace(os.sep, "/")
            client.bucket(bucket).blob(blob_name).upload_from_filename(path)
            names.append(blob_name)
    return sorted(names)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Poll the emulator's bucket list until it answers (or fail with its output if it died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gcp-storage-emulator exited with {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b?project=test", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"gcp-storage-emulator did not answer at {url} within {timeout:.0f} s")


@contextlib.contextmanager
def emulator_process() -> Iterator[str]:
    """A `gcp-storage-emulator` subprocess (in-memory) on a free localhost port; yields its base URL.

    Skips the calling test when the package (the test extra's gcp-storage-emulator) is not installed; a
    process that starts and then dies or never answers is an error, with its output.
    """
    pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator (the test extra) is not installed")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port),
         "--in-memory", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def storage_emulator(buckets=("mm-products",)):
    """`emulator_process` with google-cloud-storage, Beam and GDAL's /vsigs/ pointed at it; yields a storage
    client on which `buckets` exist. The environment and Beam's credential cache are restored afterwards."""
    from apache_beam.internal.gcp import auth as beam_auth

    with emulator_process() as url:
        saved_env = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "NO_GCE_CHECK", "CPL_GS_ENDPOINT", "GS_NO_SIGN_REQUEST")}
        saved_auth = (beam_auth._Credentials._credentials_init, beam_auth._Credentials._credentials)
        try:
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
