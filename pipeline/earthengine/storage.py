"""Cloud Storage helpers for the Earth Engine steps: gs:// URIs, complete-export checks, listing COGs.

The `google-cloud-storage` client is always passed in (or made by `default_client`), so tests inject a fake or
point the real client at `gcp-storage-emulator` through STORAGE_EMULATOR_HOST.
"""
from __future__ import annotations

from pipeline.errors import UserError

MIXER_SUFFIX = "mixer.json"


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """('bucket', 'path/inside') of 'gs://bucket/path/inside/' (no trailing slash on the path)."""
    if not isinstance(uri, str) or not uri.startswith("gs://"):
        raise UserError(f"{uri}: not a Cloud Storage URI (gs://bucket/path)")
    bucket, _, path = uri[len("gs://") :].partition("/")
    if not bucket:
        raise UserError(f"{uri}: no bucket name")
    return bucket, path.strip("/")


def join_path(*parts: object) -> str:
    """Join object-path parts with '/', skipping empty parts."""
    return "/".join(str(part).strip("/") for part in parts if str(part).strip("/"))


def default_client(project: str | None = None):
    """A google-cloud-storage client (Application Default Credentials, or the emulator when configured)."""
    from google.cloud import storage

    return storage.Client(project=project)


def export_is_complete(client, bucket: str, directory: str, stem: str = "") -> bool:
    """True when `gs://bucket/directory/` holds the mixer of an export named `stem…` (any export when stem is '').

    Earth Engine writes the mixer once every shard is written, so its presence marks a whole export.
    """
    prefix = directory.strip("/") + "/" + stem
    for blob in client.list_blobs(bucket, prefix=prefix):
        if blob.name.endswith(MIXER_SUFFIX):
            return True
    return False


def list_uris(client, uri_prefix: str, suffixes: tuple[str, ...] = (".tif", ".tiff")) -> list[str]:
    """gs:// URIs of every object under `uri_prefix` whose name ends with one of `suffixes`, sorted."""
    bucket, prefix = split_gcs_uri(uri_prefix)
    prefix = prefix + "/" if prefix else ""
    names = [
        blob.name
        for blob in client.list_blobs(bucket, prefix=prefix)
        if blob.name.lower().endswith(tuple(s.lower() for s in suffixes))
    ]
    return [f"gs://{bucket}/{name}" for name in sorted(names)]
