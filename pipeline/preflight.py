"""Fail fast on the cloud: probe every `gs://` input and output, and Earth Engine, before any work starts.

Without network or credentials, Google's clients retry for minutes (google-cloud-storage's default retry
deadline is 120 s, google-auth retries its token request, the Compute Engine metadata server is probed) and
then often end in a traceback. A command or pipeline instead calls `probe_storage` (or
`probe_earth_engine`) first: each distinct `gs://` location is probed once, inputs by listing one object
under them (read access), outputs by writing and deleting one small object under them (write access),
without retries and with short request timeouts, all of it under one overall deadline (`DEFAULT_TIMEOUT_S`,
well under 30 s). A failure is one `UserError` line naming the path and what to check.

Commands declare their paths: a command module may define `preflight_paths(args) -> (inputs, outputs)`,
or the attributes `PREFLIGHT_INPUTS` / `PREFLIGHT_OUTPUTS` (names of `args` attributes holding a path or a
list of paths); `check_command` (called by `pipeline.cli`) probes them. Local paths are ignored.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from pipeline.errors import UserError
from pipeline.failures import first_line

DEFAULT_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 8.0
PROBE_PREFIX = ".mining-mapper-preflight-"
_WILDCARDS = "*?["

T = TypeVar("T")


def gcs_locations(paths: Iterable[str | None]) -> list[str]:
    """The distinct `gs://` locations among `paths`, in order; a glob is cut before its first wildcard."""
    seen: dict[str, None] = {}
    for path in paths:
        if not isinstance(path, str) or not path.startswith("gs://"):
            continue
        cut = min((path.find(c) for c in _WILDCARDS if c in path), default=-1)
        location = path[:cut] if cut >= 0 else path
        seen.setdefault(location, None)
    return list(seen)


def _split(location: str) -> tuple[str, str]:
    bucket, _, prefix = location[len("gs://"):].partition("/")
    if not bucket:
        raise UserError(f"{location}: no bucket in the URI (gs://BUCKET/PATH)")
    return bucket, prefix


def endpoint() -> str:
    """Where Cloud Storage requests go: $STORAGE_EMULATOR_HOST when set, else storage.googleapis.com."""
    return os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"


def run_with_deadline(function: Callable[[], T], timeout: float, on_timeout: Callable[[], str]) -> T:
    """`function()` in a daemon thread, waited for at most `timeout` seconds.

    Its result or exception is passed on; past the deadline a `UserError` with `on_timeout()` is raised
    and the thread is abandoned (it is a daemon: it cannot keep the process alive).
    """
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread unchanged
            outcome["error"] = error

    thread = threading.Thread(target=target, name="mining-mapper-preflight", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise UserError(on_timeout())
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _storage_problem(error: BaseException, location: str, action: str) -> str | None:
    """One line saying what is wrong with `action` on `location`, or None when `error` is not a cloud failure."""
    import google.auth.exceptions as auth_errors
    import requests
    from google.api_core import exceptions as api

    where = endpoint()
    if isinstance(error, auth_errors.DefaultCredentialsError):
        return (f"{location}: no Google Cloud credentials to {action} it: run `gcloud auth application-default login` "
                "or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key")
    if isinstance(error, (auth_errors.RefreshError, api.Unauthorized)):
        return f"{location}: the credentials were refused ({first_line(error, 200)}): renew them or check the key"
    if isinstance(error, (auth_errors.TransportError, requests.exceptions.ConnectionError, ConnectionError)):
        return f"{location}: cannot reach Cloud Storage at {where} ({first_line(error, 200)}): check the network, proxy and firewall"
    if isinstance(error, (requests.exceptions.Timeout, TimeoutError)):
        return f"{location}: Cloud Storage at {where} did not answer in time: check the network, proxy and firewall"
    if isinstance(error, api.Forbidden):
        return f"{location}: permission denied to {action} it ({first_line(error, 200)}): check the account's roles on the bucket"
    if isinstance(error, api.NotFound):
        return f"{location}: the bucket does not exist (or the account cannot see it)"
    if isinstance(error, api.GoogleAPICallError):
        return f"{location}: Cloud Storage refused to {action} it ({first_line(error, 200)})"
    return None


def _probe_all(inputs: Sequence[str], outputs: Sequence[str], project: str | None, request_timeout: float,
               current: list[str]) -> None:
    from pipeline.earthengine import storage

    client_box: list = []

    def client():
        if not client_box:
            client_box.append(storage.default_client(project or os.environ.get("GOOGLE_CLOUD_PROJECT") or "<none>"))
        return client_box[0]

    for location in inputs:
        current[0] = location
        bucket, prefix = _split(location)
        try:
            list(client().list_blobs(bucket, prefix=prefix, max_results=1, timeout=request_timeout, retry=None))
        except Exception as error:  # classified below; anything else is passed on
            problem = _storage_problem(error, location, "read")
            if problem is None:
                raise
            raise UserError(problem) from error
    for location in outputs:
        current[0] = location
        bucket, prefix = _split(location)
        name = "/".join(p for p in (prefix.rstrip("/"), PROBE_PREFIX + uuid.uuid4().hex) if p)
        try:
            blob = client().bucket(bucket).blob(name)
            blob.upload_from_string(b"", timeout=request_timeout, retry=None)
            blob.delete(timeout=request_timeout, retry=None)
        except Exception as error:  # classified below; anything else is passed on
            problem = _storage_problem(error, location, "write to")
            if problem is None:
                raise
            raise UserError(problem) from error


def probe_storage(
    inputs: Iterable[str | None] = (),
    outputs: Iterable[str | None] = (),
    timeout: float = DEFAULT_TIMEOUT_S,
    project: str | None = None,
) -> None:
    """Probe each `gs://` input (list) and output (write and delete a probe object) once, within `timeout` s.

    Local paths are skipped, so a command can pass all of its paths. Raises `UserError` naming the
    first location that cannot be reached, read or written and what to check; returns quietly when
    there is no `gs://` path at all (nothing is imported then).
    """
    ins, outs = gcs_locations(inputs), gcs_locations(outputs)
    if not ins and not outs:
        return
    started = time.monotonic()
    request_timeout = min(REQUEST_TIMEOUT_S, timeout)
    current = [(ins or outs)[0]]  # the location being probed, named when the deadline passes
    run_with_deadline(
        lambda: _probe_all(ins, outs, project, request_timeout, current),
        timeout,
        lambda: (f"{current[0]}: no answer from Cloud Storage at {endpoint()} within {time.monotonic() - started:.0f} s: "
                 "check the network, proxy and firewall, and the credentials (GOOGLE_APPLICATION_CREDENTIALS)"),
    )


def _check_earth_engine(config) -> None:
    import google.auth.exceptions as auth_errors
    import requests

    from pipeline.earthengine import auth

    key = config.service_account_key or "Application Default Credentials"
    try:
        if config.service_account_key:
            # The token request first: it fails at once without network, where the client library's
            # discovery request (in ee.Initialize) retries for tens of seconds.
            import google.auth.transport.requests

            credentials, _ = auth.load_credentials(config)
            credentials.refresh(google.auth.transport.requests.Request(session=_session_with_timeout()))
        auth.initialize(config)
        import ee

        credentials = getattr(ee.data._get_state(), "credentials", None)
        if credentials is not None and hasattr(credentials, "refresh") and not getattr(credentials, "valid", True):
            import google.auth.transport.requests

            credentials.refresh(google.auth.transport.requests.Request(session=_session_with_timeout()))
    except UserError:
        raise
    except (auth_errors.TransportError, requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            ConnectionError, TimeoutError) as error:
        raise UserError(
            f"{key}: cannot reach Earth Engine ({first_line(error, 200)}): check the network, proxy and firewall"
        ) from error
    except auth_errors.GoogleAuthError as error:
        raise UserError(f"{key}: Earth Engine refused the credentials ({first_line(error, 200)}): check the key and its account") from error


def _session_with_timeout():
    """A requests session whose requests time out after REQUEST_TIMEOUT_S unless told otherwise."""
    import requests

    session = requests.Session()
    send = session.request

    def request(method, url, **kwargs):
        kwargs.setdefault("timeout", REQUEST_TIMEOUT_S)
        return send(method, url, **kwargs)

    session.request = request  # type: ignore[method-assign]
    return session


def probe_earth_engine(config, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Initialise Earth Engine with `config` and obtain an access token, within `timeout` seconds.

    Replaces a bare `auth.initialize(config)` in the Earth Engine commands: a key that is well formed but
    cannot reach the service (no network, a proxy, a firewall) gives one `UserError` line naming the key
    instead of minutes of retries ending in a traceback. Later `auth.initialize(config)` calls are no-ops.
    """
    key = config.service_account_key or "Application Default Credentials"
    run_with_deadline(
        lambda: _check_earth_engine(config),
        timeout,
        lambda: (f"{key}: no answer from Earth Engine (oauth2.googleapis.com, earthengine.googleapis.com) within "
                 f"{timeout:.0f} s: check the network, proxy and firewall"),
    )


def _values(args, names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, (list, tuple)):
            out.extend(str(v) for v in value if v is not None)
        elif value is not None:
            out.append(str(value))
    return out


def command_paths(module, args) -> tuple[list[str], list[str]]:
    """(inputs, outputs) a command module declares for `args` (see the module docstring); ([], []) if none."""
    declared = getattr(module, "preflight_paths", None)
    if declared is not None:
        inputs, outputs = declared(args)
        return list(inputs), list(outputs)
    return _values(args, getattr(module, "PREFLIGHT_INPUTS", ())), _values(args, getattr(module, "PREFLIGHT_OUTPUTS", ()))


def check_command(module, args, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Probe the `gs://` paths a command declares before it runs (called by `pipeline.cli.main`)."""
    inputs, outputs = command_paths(module, args)
    probe_storage(inputs, outputs, timeout=timeout, project=getattr(args, "project", None))
