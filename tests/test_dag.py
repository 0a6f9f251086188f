"""The Cloud Composer DAG (templates/composer/).

Three layers, each skipping on its own with the reason:
- the run plan (`mining_mapper_plan.py`, pure Python): always;
- the plan against the real `mining-mapper` command parser and pipeline options: where the project is
  installed (the main virtualenv);
- the DAG under real Airflow (import through a DagBag, task graph, rendered operator fields, the sensor and
  the plan task): where apache-airflow and its Google/Kubernetes/Beam providers are installed, i.e. the
  separate virtualenv of `make airflow-test` (.venv-airflow, pinned by templates/composer/constraints-airflow.txt).
"""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from datetime import datetime, UTC
from pathlib import Path

import pytest

COMPOSER = Path(__file__).resolve().parent.parent / "templates" / "composer"
METADATA = Path(__file__).resolve().parent.parent / "templates" / "metadata.json"


def _load_plan_module():
    """Import templates/composer/mining_mapper_plan.py under its deployed name (as the DAG imports it)."""
    if "mining_mapper_plan" not in sys.modules:
        spec = importlib.util.spec_from_file_location("mining_mapper_plan", COMPOSER / "mining_mapper_plan.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["mining_mapper_plan"] = module
        spec.loader.exec_module(module)
    return sys.modules["mining_mapper_plan"]


plan_lib = _load_plan_module()

HAVE_AIRFLOW = importlib.util.find_spec("airflow") is not None
needs_airflow = pytest.mark.skipif(
    not HAVE_AIRFLOW,
    reason="apache-airflow is not installed here; the DAG is tested under real Airflow by `make airflow-test` "
           "(its own virtualenv, .venv-airflow)",
)
HAVE_PROJECT = importlib.util.find_spec("pipeline") is not None and importlib.util.find_spec("apache_beam") is not None \
    and importlib.util.find_spec("ee") is not None
needs_project = pytest.mark.skipif(not HAVE_PROJECT, reason="the mining-mapper project is not installed in this "
                                                            "environment (the Airflow virtualenv has only Airflow)")

CONFIG = {
    "project": "my-project",
    "region": "us-central1",
    "bucket": "my-bucket",
    "template": "gs://my-bucket/templates/mining-mapper.json",
    "image": "us-central1-docker.pkg.dev/my-project/mining/mining-mapper:abc123",
    "model": "gs://my-bucket/models/national",
    "collection": "projects/my-project/assets/mining/mining_c{last_year}",
    "grids": "1010,1200-1202",
}
MARCH_2025 = datetime(2025, 3, 1, 6, 0)


# --- the plan -------------------------------------------------------------------------------------------

def test_scheduled_run_processes_the_whole_series_up_to_last_year():
    plan = plan_lib.plan_run(CONFIG, {}, MARCH_2025)
    assert plan["years"] == "1985-2024" and plan["grids"] == "1010,1200-1202"
    assert plan["exports"] == "gs://my-bucket/exports" and plan["output"] == "gs://my-bucket/cogs/2024"
    assert plan["collection"] == "projects/my-project/assets/mining/mining_c2024"
    assert plan["export_args"] == [
        "export", "--exports", "gs://my-bucket/exports", "--years", "1985-2024", "--grids", "1010,1200-1202",
        "--band-preset", "appendix", "--wait", "--poll-seconds", "60", "--wait-timeout", str(48 * 3600),
        "--project", "my-project",
    ]
    assert plan["ingest_args"] == [
        "ingest", "--cogs-prefix", "gs://my-bucket/cogs/2024", "--collection",
        "projects/my-project/assets/mining/mining_c2024", "--read-tags", "--bands", "classification",
        "--overwrite", "--wait", "--poll-seconds", "60", "--project", "my-project",
    ]
    assert plan["poststeps_args"] == []  # none configured
    launch = plan["flex_body"]["launchParameter"]
    assert launch["containerSpecGcsPath"] == CONFIG["template"] and launch["jobName"] == "mining-mapper-2024"
    assert launch["parameters"]["sdk_container_image"] == CONFIG["image"]
    assert launch["parameters"]["require_gpu"] == "true"
    assert launch["parameters"]["reuse_raw"] == "gs://my-bucket/cogs/2023/raw"  # last year's raw results
    assert launch["parameters"]["overwrite"] == "true"  # a retry of the year's run replaces its output set
    assert all(isinstance(v, str) for v in launch["parameters"].values())
    environment = launch["environment"]
    assert environment["additionalExperiments"] == [
        "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver", "use_runner_v2",
        "no_use_multiple_sdk_containers",
    ]
    assert environment["machineType"] == "n1-standard-8"
    assert environment["tempLocation"] == "gs://my-bucket/dataflow/temp"


def test_manual_params_override_years_and_grids():
    plan = plan_lib.plan_run(CONFIG, {"years": "2000-2003", "grids": "7, 5-6"}, MARCH_2025)
    assert plan["years"] == "2000-2003" and plan["grids"] == "5-7"
    assert plan["flex_body"]["launchParameter"]["parameters"]["years"] == "2000-2003"
    assert plan["flex_body"]["launchParameter"]["jobName"] == "mining-mapper-2003"


@pytest.mark.parametrize("params, message", [
    ({"years": "2000,2002"}, "consecutive"),
    ({"years": "2005-2001"}, "not a number or a LOW-HIGH range"),
    ({"grids": "12a"}, "grids: '12a'"),
    ({"grids": "0-3"}, "within 1-2601"),
    ({"years": "1950-1960"}, "out of range"),
])
def test_bad_params_are_refused_with_the_reason(params, message):
    with pytest.raises(plan_lib.PlanError, match=re.escape(message)):
        plan_lib.plan_run(CONFIG, params, MARCH_2025)


def test_bad_configuration_names_the_keys():
    with pytest.raises(plan_lib.PlanError, match="missing required key.*bucket, template"):
        plan_lib.plan_run({k: v for k, v in CONFIG.items() if k not in ("bucket", "template")}, {}, MARCH_2025)
    with pytest.raises(plan_lib.PlanError, match="unknown key.*buckett"):
        plan_lib.plan_run({**CONFIG, "buckett": "x"}, {}, MARCH_2025)
    with pytest.raises(plan_lib.PlanError, match="template must be a gs:// path"):
        plan_lib.plan_run({**CONFIG, "template": "/local/spec.json"}, {}, MARCH_2025)
    with pytest.raises(plan_lib.PlanError, match="does not declare: tresholdd"):
        plan_lib.plan_run({**CONFIG, "pipeline_parameters": {"tresholdd": 0.4}}, {}, MARCH_2025)
    with pytest.raises(plan_lib.PlanError, match="JSON object"):
        plan_lib.plan_run(["not", "a", "dict"], {}, MARCH_2025)


def test_cpu_workers_and_earth_engine_post_steps():
    config = {**CONFIG, "accelerator": "", "spatial_filter": "earthengine", "poststeps": "prevalence,class-id",
              "landcover": "projects/mapbiomas/lulc", "occurrences": "projects/p/assets/sigmine",
              "probability_band": True, "pipeline_parameters": {"threshold": 0.4}}
    plan = plan_lib.plan_run(config, {}, MARCH_2025)
    launch = plan["flex_body"]["launchParameter"]
    assert launch["parameters"]["require_gpu"] == "false" and launch["parameters"]["threshold"] == "0.4"
    assert launch["parameters"]["probability_band"] == "true"
    assert not any(e.startswith("worker_accelerator") for e in launch["environment"]["additionalExperiments"])
    assert plan["ingest_args"][plan["ingest_args"].index("--bands") + 1] == "classification,probability"
    args = plan["poststeps_args"]
    assert args[:2] == ["ee-poststeps", "--collection"]
    assert args[args.index("--steps") + 1] == "spatial,prevalence,class-id"
    assert args[args.index("--dest") + 1] == "projects/my-project/assets/mining/mining_c2024_post"
    assert args[args.index("--land-cover") + 1] == "projects/mapbiomas/lulc"


def test_ids_expand_and_compact_round_trip():
    assert plan_lib.expand_ids(" 1200-1202, 1010 ,1201", "grids") == [1010, 1200, 1201, 1202]
    assert plan_lib.compact_ids([1990, 1985, 1986, 1987, 1991, 2000]) == "1985-1987,1990-1991,2000"
    for text in ("1", "1-3", "1,3,5-9,11"):
        assert plan_lib.compact_ids(plan_lib.expand_ids(text, "x")) == text


def test_missing_exports_counts_only_mixers_of_the_run():
    names = [
        "exports/1010/2000/mining_1010_2000-mixer.json",
        "exports/1010/2000/mining_1010_2000-00000.tfrecord.gz",
        "exports/1010/2001/mining_1010_2001-00000.tfrecord.gz",  # shards but no mixer yet: not complete
        "exports/1011/2000/mining_1011_2000-mixer.json",
        "other/1011/2001/mining_1011_2001-mixer.json",  # another prefix
        "exports/9999/2001/mining_9999_2001-mixer.json",  # not asked for
    ]
    missing = plan_lib.missing_exports(names, "gs://my-bucket/exports", "1010-1011", "2000-2001")
    assert missing == [(1010, 2001), (1011, 2001)]
    assert plan_lib.missing_exports(names + ["exports/1010/2001/x-mixer.json", "exports/1011/2001/y-mixer.json"],
                                    "gs://my-bucket/exports", "1010-1011", "2000-2001") == []


def test_streaming_mode_is_off_by_default_and_starts_the_streaming_template_when_asked():
    batch = plan_lib.plan_run(CONFIG, {}, MARCH_2025)
    assert batch["streaming"] is False and batch["stream_body"] is None
    assert "streaming" not in batch["flex_body"]["launchParameter"]["parameters"]
    assert batch["status_prefix"] == "cogs/2024/streaming/"
    stream = plan_lib.plan_run({**CONFIG, "streaming": True, "series_timeout_hours": 24, "finish_incomplete": True},
                               {}, MARCH_2025)
    launch = stream["stream_body"]["launchParameter"]
    assert launch["jobName"] == "mining-mapper-stream-2024"
    assert launch["parameters"] == {**batch["flex_body"]["launchParameter"]["parameters"], "streaming": "true",
                                    "series_timeout": "86400", "finish_incomplete": "true"}
    assert launch["environment"] == batch["flex_body"]["launchParameter"]["environment"]
    assert stream["finish_incomplete"] is True
    # the run's param wins over the configuration, both ways; the configuration's pipeline_parameters win
    assert plan_lib.plan_run({**CONFIG, "streaming": True}, {"streaming": False}, MARCH_2025)["stream_body"] is None
    overridden = plan_lib.plan_run({**CONFIG, "pipeline_parameters": {"series_timeout": 60}}, {"streaming": True}, MARCH_2025)
    assert overridden["stream_body"]["launchParameter"]["parameters"]["series_timeout"] == "60"
    assert overridden["stream_body"]["launchParameter"]["parameters"]["finish_incomplete"] == "false"
    with pytest.raises(plan_lib.PlanError, match="streaming must be true or false, not 'yes'"):
        plan_lib.plan_run({**CONFIG, "streaming": "yes"}, {}, MARCH_2025)


@pytest.mark.parametrize("value", ["true", "false", True])
@pytest.mark.parametrize("mode", [False, True])
def test_streaming_in_pipeline_parameters_is_refused(value, mode):
    """Only the DAG's streaming switch picks the job's kind: a `streaming` pipeline parameter would turn the batch
    `classify` launch into a streaming job nothing drains, or the streaming launch into a batch job."""
    config = {**CONFIG, "streaming": mode, "pipeline_parameters": {"streaming": value}}
    with pytest.raises(plan_lib.PlanError, match="pipeline_parameters may not set streaming: use the DAG's "
                                                 "streaming switch"):
        plan_lib.plan_run(config, {}, MARCH_2025)
    assert "streaming" not in plan_lib.TEMPLATE_PARAMETERS + plan_lib.BEAM_PARAMETERS


def _status(grid, state, years_in, missing=()):
    """A status file as transforms/streaming.py writes it (grid_years left out: not read by the DAG)."""
    return {"grid": str(grid), "state": state, "years_in": {str(y): "f" for y in years_in},
            "missing_years": list(missing), "grid_years": []}


def test_stream_waiting_until_every_grid_is_filtered():
    years = "2000-2002"
    records = {"cogs/2002/streaming/1010.json": _status(1010, "filtered", [2000, 2001, 2002])}
    assert plan_lib.stream_waiting(records, "1010-1011", years, False) == {1011: "no status file yet"}
    records["cogs/2002/streaming/1011.json"] = _status(1011, "incomplete", [2000], missing=[2001, 2002])
    # the series timeout passed: without finish_incomplete the job will do nothing more for that grid
    assert plan_lib.stream_waiting(records, "1010-1011", years, False) == {}
    # with finish_incomplete the job filters it next: wait for that
    assert plan_lib.stream_waiting(records, "1010-1011", years, True) == {1011: "incomplete"}
    records["cogs/2002/streaming/1011.json"] = _status(1011, "finished incomplete", [2000], missing=[2001, 2002])
    assert plan_lib.stream_waiting(records, "1010-1011", years, True) == {}
    # a status file of other years (an earlier run into the same output) does not count
    records["cogs/2002/streaming/1010.json"] = _status(1010, "filtered", [1999, 2000, 2001, 2002])
    assert plan_lib.stream_waiting(records, "1010-1011", years, True) == {1010: "no status file yet"}


# --- the plan against the real command line and pipeline options ------------------------------------------

@needs_project
def test_commands_parse_with_the_real_mining_mapper_parser():
    from pipeline.cli import build_parser
    from pipeline.earthengine import options as ee_options

    config = {**CONFIG, "poststeps": "prevalence", "landcover": "projects/m/lulc"}
    plan = plan_lib.plan_run(config, {}, MARCH_2025)
    parser = build_parser()
    for key, command in (("export_args", "export"), ("ingest_args", "ingest"), ("poststeps_args", "ee-poststeps")):
        args = parser.parse_args(plan[key])
        assert args.command == command
        assert args.project == "my-project" and args.wait
    export = parser.parse_args(plan["export_args"])
    assert ee_options.grid_ids_from_args(export) == [1010, 1200, 1201, 1202]
    assert ee_options.parse_years(export.years) == list(range(1985, 2025))
    assert export.wait_timeout == 48 * 3600
    ingest = parser.parse_args(plan["ingest_args"])
    assert ingest.cogs_prefix == "gs://my-bucket/cogs/2024" and ingest.read_tags and ingest.overwrite


@needs_project
def test_flex_parameters_are_valid_pipeline_options_and_match_the_metadata_regexes():
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.options import build_config, option_names

    regexes = {p["name"]: p.get("regexes", []) for p in json.loads(METADATA.read_text())["parameters"]}
    config = {**CONFIG, "pipeline_parameters": {"threshold": 0.35, "min_component_size": 12}}
    parameters = plan_lib.plan_run(config, {}, MARCH_2025)["flex_body"]["launchParameter"]["parameters"]
    for name, value in parameters.items():
        if name in plan_lib.BEAM_PARAMETERS:
            continue
        assert name in regexes, name
        for pattern in regexes[name]:
            assert re.match(pattern, value), (name, value, pattern)
    argv = [f"--{name}={value}" for name, value in parameters.items() if name in option_names()]
    run_config = build_config(PipelineOptions(argv))
    assert run_config.years == tuple(range(1985, 2025))
    assert run_config.grids == ("1010", "1200", "1201", "1202")
    assert run_config.threshold == 0.35 and run_config.filter_params.min_component_size == 12
    assert run_config.require_gpu is True


def _launcher_argv(body):
    """What the Flex Template launcher runs the entry point with: `--name=value` per launch parameter, through
    templates/main.py's `launcher_args` and the pipeline's strict flag check (as `pipeline.run.main` does)."""
    from pipeline.flags import check_run_argv

    spec = importlib.util.spec_from_file_location("flex_main_for_dag_test", COMPOSER.parent / "main.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    parameters = body["launchParameter"]["parameters"]
    return check_run_argv(entry.launcher_args([f"--{name}={value}" for name, value in parameters.items()]))


@needs_project
def test_stream_parameters_are_the_streaming_jobs_pipeline_options():
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from pipeline.options import MiningMapperOptions

    regexes = {p["name"]: p.get("regexes", []) for p in json.loads(METADATA.read_text())["parameters"]}
    config = {**CONFIG, "streaming": True, "series_timeout_hours": 36, "finish_incomplete": True}
    plan = plan_lib.plan_run(config, {}, MARCH_2025)
    parameters = plan["stream_body"]["launchParameter"]["parameters"]
    for name in ("series_timeout", "finish_incomplete"):
        assert all(re.match(pattern, parameters[name]) for pattern in regexes[name]), name
    argv = _launcher_argv(plan["stream_body"])
    options = PipelineOptions(argv).view_as(MiningMapperOptions)
    assert options.series_timeout == 36 * 3600 and options.finish_incomplete == "true"  # SwitchAction's form
    assert PipelineOptions(argv).view_as(StandardOptions).streaming  # Beam's switch, from the launcher's streaming=true
    # the batch launch of the same plan parses too, and is not a streaming job
    assert not PipelineOptions(_launcher_argv(plan["flex_body"])).view_as(StandardOptions).streaming


# --- the DAG under real Airflow ---------------------------------------------------------------------------

EXPECTED_EDGES = {
    "plan": {"mode"},
    "mode": {"start_stream", "ee_export"},
    "start_stream": {"ee_export"},
    "ee_export": {"after_export"},
    "after_export": {"wait_for_exports", "wait_for_stream"},
    "wait_for_exports": {"classify"},
    "classify": {"ingest_cogs"},
    "wait_for_stream": {"drain_stream", "ingest_cogs"},
    "drain_stream": {"ingest_cogs"},
    "ingest_cogs": {"has_poststeps"},
    "has_poststeps": {"ee_poststeps"},
    "ee_poststeps": set(),
}


@pytest.fixture(scope="module")
def dag_module(tmp_path_factory):
    """The DAG file loaded by Airflow's own DagBag (as the scheduler would), and its module."""
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3
        bag = DagBag(dag_folder=str(COMPOSER))
    except ImportError:  # Airflow 2
        from airflow.models.dagbag import DagBag
        bag = DagBag(dag_folder=str(COMPOSER), include_examples=False)
    assert bag.import_errors == {}, bag.import_errors
    assert set(bag.dags) == {"mining_mapper"}
    dag = bag.dags["mining_mapper"]
    module = next(m for name, m in sys.modules.items() if getattr(m, "__file__", "") == str(COMPOSER / "mining_mapper_dag.py"))
    return dag, module


@needs_airflow
def test_dag_task_graph(dag_module):
    dag, _ = dag_module
    assert set(dag.task_dict) == set(EXPECTED_EDGES)
    for task_id, downstream in EXPECTED_EDGES.items():
        assert dag.task_dict[task_id].downstream_task_ids == downstream, task_id
    upstream = {task_id: {u for u, ds in EXPECTED_EDGES.items() if task_id in ds} for task_id in EXPECTED_EDGES}
    for task_id, ups in upstream.items():
        assert dag.task_dict[task_id].upstream_task_ids == ups, task_id


@needs_airflow
def test_dag_schedule_params_and_operators(dag_module):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator, DataflowStopJobOperator

    dag, _ = dag_module
    timetable = dag.timetable  # the Task SDK's definition in Airflow 3, the scheduler's class in Airflow 2
    assert (getattr(timetable, "expression", None) or timetable.summary) == "0 6 1 3 *"
    assert dag.catchup is False and dag.max_active_runs == 1 and dag.render_template_as_native_obj
    assert set(dag.params.keys()) == {"years", "grids", "streaming"}
    assert isinstance(dag.task_dict["classify"], DataflowStartFlexTemplateOperator)
    assert isinstance(dag.task_dict["start_stream"], DataflowStartFlexTemplateOperator)
    drain = dag.task_dict["drain_stream"]
    assert isinstance(drain, DataflowStopJobOperator) and drain.drain_pipeline is True
    # the joins after a branch run after whichever side ran; the drain also after a failure upstream
    assert dag.task_dict["ee_export"].trigger_rule == "none_failed_min_one_success"
    assert dag.task_dict["ingest_cogs"].trigger_rule == "none_failed_min_one_success"
    assert drain.trigger_rule == "none_skipped"
    assert dag.task_dict["wait_for_stream"].mode == "reschedule"
    for task_id in ("ee_export", "ingest_cogs", "ee_poststeps"):
        pod = dag.task_dict[task_id]
        assert isinstance(pod, KubernetesPodOperator) and pod.cmds == ["mining-mapper"]
    sensor = dag.task_dict["wait_for_exports"]
    assert sensor.mode == "reschedule"


class _FakeTaskInstance:
    """Just what the templates and callables use: xcom_pull of the plan task."""

    def __init__(self, plan):
        self.plan = plan

    def xcom_pull(self, task_ids=None, key="return_value", **_):
        """The plan; the streaming job's id (what DataflowStartFlexTemplateOperator pushes as job_id)."""
        if (task_ids, key) == ("start_stream", "job_id"):
            return "2026-03-01_06_00_00-123"
        assert task_ids == "plan"
        return self.plan


@needs_airflow
def test_rendered_operator_fields_are_the_plan(dag_module):
    dag, _ = dag_module
    plan = plan_lib.plan_run({**CONFIG, "poststeps": "prevalence", "landcover": "projects/m/lulc"}, {"streaming": True},
                             MARCH_2025)
    context = {"ti": _FakeTaskInstance(plan), "params": {}}
    env = dag.get_template_env()
    rendered = {}
    for task_id in ("ee_export", "ingest_cogs", "ee_poststeps", "classify", "wait_for_exports", "start_stream",
                    "wait_for_stream", "drain_stream"):
        task = dag.task_dict[task_id].prepare_for_execution() if hasattr(dag.task_dict[task_id], "prepare_for_execution") \
            else dag.task_dict[task_id]
        task.render_template_fields(context, jinja_env=env)
        rendered[task_id] = task
    assert rendered["ee_export"].arguments == plan["export_args"]  # a native list, not its repr
    assert rendered["ingest_cogs"].arguments == plan["ingest_args"]
    assert rendered["ee_poststeps"].arguments == plan["poststeps_args"]
    assert rendered["ee_export"].image == CONFIG["image"]
    assert rendered["ee_export"].namespace == "composer-user-workloads"
    assert rendered["ee_export"].config_file == "/home/airflow/composer_kube_config"
    assert rendered["classify"].body == plan["flex_body"]
    assert rendered["classify"].location == "us-central1" and rendered["classify"].project_id == "my-project"
    assert rendered["wait_for_exports"].op_kwargs == {"plan": plan}
    assert rendered["start_stream"].body == plan["stream_body"]
    assert rendered["start_stream"].body["launchParameter"]["parameters"]["streaming"] == "true"
    assert rendered["start_stream"].location == "us-central1" and rendered["start_stream"].project_id == "my-project"
    assert rendered["wait_for_stream"].op_kwargs == {"plan": plan}
    assert rendered["drain_stream"].job_id == "2026-03-01_06_00_00-123"
    assert rendered["drain_stream"].location == "us-central1" and rendered["drain_stream"].project_id == "my-project"


@needs_airflow
def test_plan_task_reads_the_variable(dag_module, monkeypatch):
    dag, _ = dag_module
    callable_ = dag.task_dict["plan"].python_callable
    monkeypatch.setenv("AIRFLOW_VAR_MINING_MAPPER", json.dumps(CONFIG))
    plan = callable_(params={"years": "2010-2012", "grids": ""}, logical_date=MARCH_2025, dag_run=None)
    assert plan == plan_lib.plan_run(CONFIG, {"years": "2010-2012"}, MARCH_2025)
    monkeypatch.delenv("AIRFLOW_VAR_MINING_MAPPER")
    with pytest.raises(plan_lib.PlanError, match="Variable 'mining_mapper' is not set"):
        callable_(params={}, logical_date=MARCH_2025, dag_run=None)


@needs_airflow
def test_sensor_waits_for_every_mixer(dag_module, monkeypatch):
    _, module = dag_module
    plan = plan_lib.plan_run(CONFIG, {"years": "2000-2001", "grids": "1010"}, MARCH_2025)
    listed = {"names": ["exports/1010/2000/m-mixer.json"]}
    calls = []

    class FakeGCSHook:
        def list(self, bucket_name, prefix=None, match_glob=None, **_):
            calls.append((bucket_name, prefix, match_glob))
            return list(listed["names"])

    monkeypatch.setattr(module, "GCSHook", FakeGCSHook)
    assert module.exports_ready(plan) is False
    listed["names"].append("exports/1010/2001/m-mixer.json")
    assert module.exports_ready(plan) is True
    assert calls[0] == ("my-bucket", "exports/", "**/*mixer.json")


@needs_airflow
def test_poststeps_are_skipped_when_none_are_configured(dag_module):
    dag, _ = dag_module
    callable_ = dag.task_dict["has_poststeps"].python_callable
    assert callable_(ti=_FakeTaskInstance(plan_lib.plan_run(CONFIG, {}, MARCH_2025))) is False
    with_steps = plan_lib.plan_run({**CONFIG, "poststeps": "prevalence", "landcover": "x"}, {}, MARCH_2025)
    assert callable_(ti=_FakeTaskInstance(with_steps)) is True


@needs_airflow
def test_branches_follow_the_plans_mode(dag_module):
    dag, _ = dag_module
    batch = _FakeTaskInstance(plan_lib.plan_run(CONFIG, {}, MARCH_2025))
    stream = _FakeTaskInstance(plan_lib.plan_run(CONFIG, {"streaming": True}, MARCH_2025))
    mode, after_export = dag.task_dict["mode"].python_callable, dag.task_dict["after_export"].python_callable
    assert (mode(ti=batch), after_export(ti=batch)) == ("ee_export", "wait_for_exports")
    assert (mode(ti=stream), after_export(ti=stream)) == ("start_stream", "wait_for_stream")


@needs_airflow
def test_stream_sensor_reads_status_files_written_since_the_run_started(dag_module, monkeypatch):

    _, module = dag_module
    plan = plan_lib.plan_run(CONFIG, {"years": "2000-2001", "grids": "1010-1011", "streaming": True}, MARCH_2025)
    objects = {"cogs/2001/streaming/1010.json": _status(1010, "filtered", [2000, 2001])}
    calls = []

    class FakeGCSHook:
        def list_by_timespan(self, bucket_name, timespan_start, timespan_end, prefix=None, match_glob=None, **_):
            calls.append((bucket_name, timespan_start, prefix, match_glob))
            return sorted(objects)

        def download(self, bucket_name, object_name, **_):
            return json.dumps(objects[object_name]).encode()

    class FakeDagRun:
        start_date = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)

    monkeypatch.setattr(module, "GCSHook", FakeGCSHook)
    assert module.stream_done(plan, dag_run=FakeDagRun()) is False  # grid 1011 has no status file yet
    objects["cogs/2001/streaming/1011.json"] = _status(1011, "filtered", [2000, 2001])
    assert module.stream_done(plan, dag_run=FakeDagRun()) is True
    assert calls[0] == ("my-bucket", FakeDagRun.start_date, "cogs/2001/streaming/", "**/*.json")
