"""What one run of the mining DAG does, as plain data: no Airflow, no Cloud calls, no project imports.

`mining_mapper_dag.py` (beside this file, both deployed to the Composer environment's dags/ folder) asks
`plan_run` for the run's plan and hands its parts to the operators:

- the `mining-mapper export` / `ingest` / `ee-poststeps` command lines, run in the project image;
- the request body of the Flex Template launch (`projects.locations.flexTemplates.launch`);
- the (grid, year) exports that must exist before the Dataflow job starts (`missing_exports`);
- in streaming mode (config or param `streaming`), the request that starts the streaming job before the
  exports are submitted (the plan's `stream_body`: `flex_template_body(..., streaming=True)`), and when that
  job is done (`stream_waiting`: every grid's status file `{output}/streaming/{grid}.json` says it was
  filtered), so that the DAG drains it.

Configuration comes from one Airflow Variable holding JSON (default name `mining_mapper`; nothing secret in
it: credentials are the Composer environment's service account). Required keys: project, region, bucket,
template, image, model, collection, grids. The rest have the defaults in `DEFAULTS`. A manual run may give
`years`, `grids` and `streaming` as DAG params; a scheduled run processes `first_year` … the year before its run date
(the filters need the whole series: gap fill, temporal and frequency work across years).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

REQUIRED = ("project", "region", "bucket", "template", "image", "model", "collection", "grids")

DEFAULTS: dict[str, Any] = {
    "ee_project": None,  # Earth Engine's Cloud project; None: `project`
    "first_year": 1985,
    "exports_prefix": "exports",  # gs://{bucket}/{exports_prefix}/{grid}/{year}/
    "output_prefix": "cogs",  # gs://{bucket}/{output_prefix}/{last_year}/…
    "model_routing": "",
    "band_preset": "appendix",
    "filter_mode": "appendix",
    "spatial_filter": "local",
    "probability_band": False,
    "origin_band": False,
    "max_batch_size": 8,
    "pipeline_parameters": {},  # any other template parameter, by name
    "poststeps": "",  # e.g. "prevalence,class-id"; "spatial" is added when spatial_filter is earthengine
    "poststeps_dest": None,  # asset folder; None: "{collection}_post"
    "landcover": None,
    "occurrences": None,
    "machine_type": "n1-standard-8",
    "accelerator": "nvidia-tesla-t4",  # "" or None: CPU workers
    "accelerator_count": 1,
    "max_workers": 10,
    "service_account": None,
    "subnetwork": None,
    "experiments": ["use_runner_v2", "no_use_multiple_sdk_containers"],
    "poll_seconds": 60,
    "export_timeout_hours": 48,
    "streaming": False,  # True: start the streaming job before the exports, drain it once every grid is filtered
    "series_timeout_hours": 168,  # streaming: a grid still incomplete this long after the job starts is reported
    "finish_incomplete": False,  # streaming: then filter it with the years it has (the DAG then drains the job)
    "namespace": "composer-user-workloads",
    "kube_config": "/home/airflow/composer_kube_config",
}

# The Flex Template's parameters: the pipeline options (templates/metadata.json, pipeline/options.py), plus
# Beam's sdk_container_image (the workers run the same image as the launcher). Beam's `streaming` is not one a
# configuration may set: the plan sets it from the DAG's streaming switch (the batch and streaming launches).
TEMPLATE_PARAMETERS = (
    "exports", "output", "grids", "years", "model", "model_routing", "band_preset", "threshold", "filter_mode",
    "min_component_size", "spatial_window", "backfill_limit", "frequency_cut", "c9_backfill_from_index",
    "spatial_filter", "min_batch_size", "max_batch_size", "inference_tile", "inference_precision", "precision_check",
    "inference_memory_gb", "export_nodata", "probability_band", "origin_band", "overwrite", "require_gpu", "reuse_raw",
    "series_timeout", "watch_interval", "exports_subscription", "finish_incomplete",
)
BEAM_PARAMETERS = ("sdk_container_image",)

_PART = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*$")
_JOB_NAME = re.compile(r"[^a-z0-9-]+")


class PlanError(ValueError):
    """The configuration or the run's parameters are wrong; the message says which key and why."""


def expand_ids(text: str, what: str) -> list[int]:
    """'1010,1200-1202' → [1010, 1200, 1201, 1202] (sorted, unique); PlanError naming `what` otherwise."""
    values: set[int] = set()
    for part in (p for p in str(text).split(",") if p.strip()):
        match = _PART.match(part)
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise PlanError(f"{what}: {part.strip()!r} is not a number or a LOW-HIGH range")
        values.update(range(int(match.group(1)), int(match.group(2) or match.group(1)) + 1))
    return sorted(values)


def compact_ids(values: Iterable[int]) -> str:
    """[1985, 1986, 1987, 1990] → '1985-1987,1990': the form every mining-mapper command accepts."""
    runs: list[list[int]] = []
    for value in sorted(set(values)):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def merged_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The Variable's JSON over `DEFAULTS`; PlanError listing every required key that is missing or empty."""
    if not isinstance(config, Mapping):
        raise PlanError("the configuration Variable must hold a JSON object")
    unknown = sorted(set(config) - set(REQUIRED) - set(DEFAULTS))
    if unknown:
        raise PlanError(f"configuration: unknown key(s) {', '.join(unknown)}")
    missing = [key for key in REQUIRED if not config.get(key)]
    if missing:
        raise PlanError(f"configuration: missing required key(s) {', '.join(missing)}")
    merged = {**DEFAULTS, **config}
    for key in ("template", "model"):
        if not str(merged[key]).startswith("gs://"):
            raise PlanError(f"configuration: {key} must be a gs:// path, not {merged[key]!r}")
    if "streaming" in merged["pipeline_parameters"]:
        # it would turn the batch `classify` launch into a streaming job nothing drains (or the reverse)
        raise PlanError("configuration: pipeline_parameters may not set streaming: use the DAG's streaming switch "
                        "(the configuration's \"streaming\" key or the run's streaming param)")
    bad = sorted(set(merged["pipeline_parameters"]) - set(TEMPLATE_PARAMETERS) - set(BEAM_PARAMETERS))
    if bad:
        raise PlanError(f"configuration: pipeline_parameters has names the template does not declare: {', '.join(bad)}")
    return merged


def run_years(params: Mapping[str, Any], config: Mapping[str, Any], run_date: datetime) -> list[int]:
    """The years of the run: the `years` param, else first_year … the year before the run date."""
    if params.get("years"):
        years = expand_ids(params["years"], "years")
    else:
        years = list(range(int(config["first_year"]), run_date.year))
    if not years:
        raise PlanError(f"no year to process (first_year {config['first_year']}, run date {run_date:%Y-%m-%d})")
    if years != list(range(years[0], years[-1] + 1)):
        raise PlanError(f"years must be consecutive for the temporal filters: {compact_ids(years)}")
    if years[0] < 1984 or years[-1] > 2100:
        raise PlanError(f"years out of range (1984-2100): {compact_ids(years)}")
    return years


def flex_template_body(config: Mapping[str, Any], exports: str, output: str, grids: str, years: str,
                       last_year: int, streaming: bool = False) -> dict[str, Any]:
    """The `launchParameter` request of the Flex Template job (every parameter value a string).

    `streaming`: the streaming job's request instead of the batch job's: the same parameters and environment
    plus Beam's `streaming=true`, the series timeout and `finish_incomplete`, under its own job name
    (`mining-mapper-stream-{last_year}`). The configuration's own pipeline_parameters (e.g. a series_timeout in
    seconds) win in both.
    """
    gpu = bool(config["accelerator"])
    parameters = {
        "exports": exports,
        "output": output,
        "grids": grids,
        "years": years,
        "model": config["model"],
        "band_preset": config["band_preset"],
        "filter_mode": config["filter_mode"],
        "spatial_filter": config["spatial_filter"],
        "max_batch_size": str(config["max_batch_size"]),
        "probability_band": str(bool(config["probability_band"])).lower(),
        "origin_band": str(bool(config["origin_band"])).lower(),
        "require_gpu": str(gpu).lower(),
        # the DAG owns gs://…/{output_prefix}/{last_year}: a retry or a re-run of that year replaces its set
        "overwrite": "true",
        "sdk_container_image": config["image"],
    }
    if config["model_routing"]:
        parameters["model_routing"] = config["model_routing"]
    # The yearly update: re-use the previous collection's raw inference results (its output's raw/ folder),
    # so that only the new year is inferred; the run keeps copies under its own output for the next year.
    parameters["reuse_raw"] = f"{output.rsplit('/', 1)[0]}/{last_year - 1}/raw"
    if streaming:
        parameters.update({
            "streaming": "true",
            "series_timeout": str(int(float(config["series_timeout_hours"]) * 3600)),
            "finish_incomplete": str(bool(config["finish_incomplete"])).lower(),
        })
    parameters.update({name: str(value) for name, value in config["pipeline_parameters"].items()})
    experiments = list(config["experiments"])
    if gpu:
        experiments.insert(0, f"worker_accelerator=type:{config['accelerator']};"
                              f"count:{int(config['accelerator_count'])};install-nvidia-driver")
    environment: dict[str, Any] = {
        "machineType": config["machine_type"],
        "maxWorkers": int(config["max_workers"]),
        "tempLocation": f"gs://{config['bucket']}/dataflow/temp",
        "stagingLocation": f"gs://{config['bucket']}/dataflow/staging",
        "additionalExperiments": experiments,
    }
    if config["service_account"]:
        environment["serviceAccountEmail"] = config["service_account"]
    if config["subnetwork"]:
        environment["subnetwork"] = config["subnetwork"]
    return {
        "launchParameter": {
            "jobName": _JOB_NAME.sub("-", f"mining-mapper-{'stream-' if streaming else ''}{last_year}".lower()),
            "containerSpecGcsPath": config["template"],
            "parameters": parameters,
            "environment": environment,
        }
    }


def stream_waiting(records: Mapping[str, Mapping[str, Any]], grids: str, years: str,
                   finish_incomplete: bool) -> dict[int, str]:
    """The grids the streaming job has not finished yet, each with why (empty: the DAG may drain the job).

    `records` are the status files `{output}/streaming/{grid}.json` written since the DAG run started (object
    name → parsed JSON; transforms/streaming.py writes them). A grid is finished when its latest file is for
    this run's years and says `filtered` or `finished incomplete`; or, without `finish_incomplete`, says
    `incomplete` (the series timeout passed: the job will not filter it unless its missing exports arrive).
    """
    asked = expand_ids(years, "years")
    state: dict[int, str] = {}
    for record in records.values():
        grid = str(record.get("grid", ""))
        if not grid.isdigit():
            continue
        covered = sorted({int(y) for y in record.get("years_in", {})} | {int(y) for y in record.get("missing_years", [])})
        if covered != asked:
            continue  # a status file of another run's years
        state[int(grid)] = str(record.get("state", ""))
    done = {"filtered", "finished incomplete"} | (set() if finish_incomplete else {"incomplete"})
    return {grid: state.get(grid, "no status file yet") for grid in expand_ids(grids, "grids")
            if state.get(grid) not in done}


def plan_run(config: Mapping[str, Any] | None, params: Mapping[str, Any], run_date: datetime) -> dict[str, Any]:
    """Everything one DAG run needs, from the configuration Variable, the run's params and its date."""
    config = merged_config(config)
    streaming = config["streaming"] if params.get("streaming") is None else params["streaming"]
    if not isinstance(streaming, bool):
        raise PlanError(f"streaming must be true or false, not {streaming!r}")
    years = run_years(params, config, run_date)
    grid_ids = expand_ids(params.get("grids") or config["grids"], "grids")
    if not grid_ids:
        raise PlanError("no grid to process: give grids in the configuration or as a param")
    if grid_ids[0] < 1 or grid_ids[-1] > 51 * 51:
        raise PlanError(f"grid ids must be within 1-2601: {compact_ids(grid_ids)}")
    grids, year_text, last_year = compact_ids(grid_ids), compact_ids(years), years[-1]
    bucket = config["bucket"]
    exports = f"gs://{bucket}/{config['exports_prefix'].strip('/')}"
    output = f"gs://{bucket}/{config['output_prefix'].strip('/')}/{last_year}"
    collection = str(config["collection"]).format(last_year=last_year)
    ee_project = config["ee_project"] or config["project"]
    access = ["--project", ee_project]
    wait = ["--wait", "--poll-seconds", str(int(config["poll_seconds"]))]

    export_args = ["export", "--exports", exports, "--years", year_text, "--grids", grids,
                   "--band-preset", config["band_preset"], *wait,
                   "--wait-timeout", str(int(float(config["export_timeout_hours"]) * 3600)), *access]
    bands = ["classification"] + (["probability"] if config["probability_band"] else []) + (
        ["origin"] if config["origin_band"] else [])
    ingest_args = ["ingest", "--cogs-prefix", output, "--collection", collection, "--read-tags",
                   "--bands", ",".join(bands), "--overwrite", *wait, *access]

    steps = [s.strip() for s in str(config["poststeps"]).split(",") if s.strip()]
    if config["spatial_filter"] == "earthengine" and "spatial" not in steps:
        steps.insert(0, "spatial")
    poststeps_args: list[str] = []
    if steps:
        dest = str(config["poststeps_dest"] or f"{collection}_post").format(last_year=last_year)
        poststeps_args = ["ee-poststeps", "--collection", collection, "--years", year_text, "--grids", grids,
                          "--steps", ",".join(steps), "--dest", dest, "--filter-mode", config["filter_mode"]]
        for key, flag in (("landcover", "--land-cover"), ("occurrences", "--occurrences")):
            if config[key]:
                poststeps_args += [flag, str(config[key])]
        poststeps_args += ["--overwrite", *wait, *access]

    flex_args = (config, exports, output, grids, year_text, last_year)
    return {
        "years": year_text,
        "grids": grids,
        "exports": exports,
        "exports_bucket": bucket,
        "exports_prefix": config["exports_prefix"].strip("/") + "/",
        "output": output,
        "collection": collection,
        "image": config["image"],
        "namespace": config["namespace"],
        "kube_config": config["kube_config"],
        "project": config["project"],
        "region": config["region"],
        "export_args": export_args,
        "ingest_args": ingest_args,
        "poststeps_args": poststeps_args,
        "flex_body": flex_template_body(*flex_args),
        "streaming": streaming,
        "stream_body": flex_template_body(*flex_args, streaming=True) if streaming else None,
        "finish_incomplete": bool(config["finish_incomplete"]),
        "status_prefix": f"{output.split('/', 3)[3]}/streaming/",  # object names of the status files
    }


def missing_exports(object_names: Iterable[str], exports: str, grids: str, years: str) -> list[tuple[int, int]]:
    """The (grid, year) pairs of the run with no `*mixer.json` under gs://…/exports/{grid}/{year}/ yet.

    `object_names` are object names in the exports bucket (as listed, without gs://bucket/); a mixer is
    what Earth Engine writes last, so its presence means the export is complete.
    """
    prefix = exports.split("/", 3)[3].strip("/") + "/" if exports.count("/") >= 3 else ""
    found: set[tuple[int, int]] = set()
    for name in object_names:
        if not name.startswith(prefix) or not name.endswith("mixer.json"):
            continue
        parts = name[len(prefix):].split("/")
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
            found.add((int(parts[0]), int(parts[1])))
    wanted = [(g, y) for g in expand_ids(grids, "grids") for y in expand_ids(years, "years")]
    return [pair for pair in wanted if pair not in found]
