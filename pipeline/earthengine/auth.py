"""Earth Engine credentials and initialisation, once per process.

Credentials come from Application Default Credentials (`gcloud auth application-default login`, or the
service account of a Dataflow worker / Compute Engine VM) or from a service-account JSON key file named at
run time; nothing secret lives in the repository. The Cloud project is an option (else the credentials'
quota project, else the ADC project). `high_volume` points the client at the high-volume endpoint, the one to
use from many parallel workers.

`initialize(config)` is idempotent and thread-safe: call it from `DoFn.setup` on every worker and from each
command; the second and later calls with the same configuration do nothing. `initialize_offline` loads the
algorithm list bundled with `earthengine-api` instead of asking the server, so that graphs can be built and
serialized (a `--dry-run`) with no network and no credentials; no request can be sent after it.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError

log = logging.getLogger(__name__)

HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"


@dataclass(frozen=True)
class EEConfig:
    """How to reach Earth Engine: project, optional service-account key file, high-volume endpoint or not."""

    project: str | None = None
    service_account_key: str | None = None
    high_volume: bool = False

    @property
    def url(self) -> str | None:
        """The API base URL, or None for the library's default endpoint."""
        return HIGH_VOLUME_URL if self.high_volume else None


_lock = threading.Lock()
_initialized_with: EEConfig | str | None = None


def load_credentials(config: EEConfig):
    """Credentials for `config`: the service-account key file when given, else Application Default Credentials.

    Returns (credentials, project) where project is the ADC project when ADC supplied one.
    """
    import ee

    if config.service_account_key:
        path = Path(config.service_account_key)
        try:
            key = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise UserError(f"{path}: cannot read the service-account key: {error.strerror or error}") from error
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: the service-account key is not JSON: {error}") from error
        if not isinstance(key, dict) or key.get("type") != "service_account" or "client_email" not in key:
            raise UserError(f"{path}: not a service-account key file (needs type service_account and client_email)")
        credentials = ee.ServiceAccountCredentials(key["client_email"], key_file=str(path))
        return credentials, key.get("project_id")

    import google.auth
    import google.auth.exceptions

    try:
        credentials, project = google.auth.default(scopes=ee.oauth.SCOPES)
    except google.auth.exceptions.DefaultCredentialsError as error:
        raise UserError(
            "Earth Engine: no Application Default Credentials; run `gcloud auth application-default login` "
            "or pass --service-account-key KEY.json"
        ) from error
    return credentials, project


def initialize(config: EEConfig = EEConfig()) -> None:
    """Initialise Earth Engine for this process with `config`; a no-op when already done with the same config."""
    global _initialized_with
    import ee

    with _lock:
        if _initialized_with == config:
            return
        if _initialized_with is not None:
            log.info("re-initialising Earth Engine with %s (was %s)", config, _initialized_with)
        credentials, adc_project = load_credentials(config)
        project = config.project or getattr(credentials, "quota_project_id", None) or adc_project
        if not project and not config.service_account_key:
            raise UserError("Earth Engine: no Cloud project; pass --project PROJECT")
        import google.auth.exceptions

        try:
            ee.Initialize(credentials, url=config.url, project=project)
        except (ee.EEException, google.auth.exceptions.GoogleAuthError) as error:
            raise UserError(f"Earth Engine: initialisation failed: {error}") from error
        _initialized_with = config
        log.info("Earth Engine initialised (project %s%s)", project, ", high-volume" if config.high_volume else "")


def initialize_offline(project: str = "offline-dry-run") -> None:
    """Initialise with the algorithm list bundled in earthengine-api: graphs build and serialize, nothing is sent."""
    global _initialized_with
    import ee
    from ee import apitestcase

    with _lock:
        if _initialized_with == "offline":
            return
        saved = (ee.data.getAlgorithms, ee.data._install_cloud_api_resource, ee.deprecation._FetchDataCatalogStac)
        ee.Reset()
        ee.data.getAlgorithms = apitestcase.GetAlgorithms
        ee.data._install_cloud_api_resource = lambda: None
        ee.deprecation._FetchDataCatalogStac = lambda: {}
        try:
            ee.Initialize(None, project=project)
        finally:
            ee.data.getAlgorithms, ee.data._install_cloud_api_resource, ee.deprecation._FetchDataCatalogStac = saved
        _initialized_with = "offline"


def reset() -> None:
    """Forget the recorded initialisation (tests, or a deliberate switch of account)."""
    global _initialized_with
    with _lock:
        _initialized_with = None


def add_arguments(parser) -> None:
    """Add --project, --service-account-key and --high-volume to an argparse parser."""
    group = parser.add_argument_group("Earth Engine access")
    group.add_argument("--project", help="Cloud project for Earth Engine requests (default: from the credentials)")
    group.add_argument(
        "--service-account-key",
        metavar="KEY.json",
        help="service-account JSON key file (default: Application Default Credentials)",
    )
    group.add_argument(
        "--high-volume",
        action="store_true",
        help=f"use the high-volume endpoint {HIGH_VOLUME_URL}",
    )


def config_from_args(args) -> EEConfig:
    """The EEConfig named by the options `add_arguments` defines."""
    return EEConfig(
        project=args.project,
        service_account_key=args.service_account_key,
        high_volume=bool(args.high_volume),
    )
