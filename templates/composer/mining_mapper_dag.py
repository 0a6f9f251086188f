"""Cloud Composer (Airflow) DAG: the yearly mining collection, end to end.

    plan → mode ─(batch)────────────────→ ee_export → after_export → wait_for_exports → classify ─┐
               └(streaming)→ start_stream ↗                  └─→ wait_for_stream → drain_stream ─┴→ ingest_cogs
                                                                       → has_poststeps → ee_poststeps

- `plan` reads the JSON Variable `mining_mapper` (project, region, bucket, template, image, model, collection,
  grids, …; see `mining_mapper_plan.py` beside this file) and the run's params, and computes every command
  line and the Flex Template request once; the other tasks take their part from its XCom.
- `ee_export`, `ingest_cogs`, `ee_poststeps` run the `mining-mapper` command in the project image (the Flex
  Template image, `templates/Dockerfile`) with the KubernetesPodOperator, in the environment's own cluster:
  the Earth Engine client and the project's code live in that image, not in the Airflow workers. Each
  command waits for its Earth Engine tasks and fails when one fails.
- `wait_for_exports` holds the Dataflow job until every (grid, year) export has its mixer in Cloud Storage
  (exports started by an earlier run are skipped by `export`, not waited for, so this is the real gate).
- `classify` launches the Flex Template (GPU workers by default) with the Google provider's
  DataflowStartFlexTemplateOperator and waits for the job.
- Streaming mode (configuration key or run param `streaming`, default off: the batch path above): `mode`
  branches to `start_stream`, which launches the same template as a streaming job (streaming=true,
  series_timeout, finish_incomplete) *before* `ee_export`, so that GPUs infer each export as it lands.
  `wait_for_stream` polls the job's status files `{output}/streaming/{grid}.json` (written since the run
  started) until every grid is filtered (`stream_waiting` in the plan module), then `drain_stream` drains the
  job (DataflowStopJobOperator, drain_pipeline=True) and `ingest_cogs` goes on as in batch mode. The drain
  runs also when `ee_export` or the wait fails (the job would otherwise run on, idle); the run then fails.

Schedule: every 1 March (Landsat Collection 2 Tier 1 scenes of December have landed by then), processing
first_year … the previous year. Manual runs take `years` and `grids` as params. No secrets: every Google
call uses the environment's service account (Workload Identity for the pods), which needs Earth Engine,
Dataflow, Storage and Artifact Registry access.

Deploy: copy this file and `mining_mapper_plan.py` to the environment's dags/ folder.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, UTC

from kubernetes.client import models as k8s
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.google.cloud.hooks.gcs import GCSHook
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator, DataflowStopJobOperator

try:  # Airflow 3
    from airflow.sdk import DAG, Param, Variable, task
    from airflow.providers.standard.sensors.python import PythonSensor
except ImportError:  # Airflow 2.x (Composer 2)
    from airflow import DAG
    from airflow.decorators import task
    from airflow.models import Variable
    from airflow.models.param import Param
    from airflow.sensors.python import PythonSensor

from mining_mapper_plan import PlanError, missing_exports, plan_run, stream_waiting

CONFIG_VARIABLE = "mining_mapper"
IDS_PATTERN = r"^$|^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$"

log = logging.getLogger(__name__)


def _template(expression: str) -> str:
    """A Jinja template of one key of the plan's XCom (rendered as a native object: lists and dicts stay so)."""
    return "{{ ti.xcom_pull(task_ids='plan')" + expression + " }}"


def _flex_template_job(task_id: str, body: str) -> DataflowStartFlexTemplateOperator:
    """The Flex Template launch of the plan's `body` request, in its project and region, never retried blindly."""
    return DataflowStartFlexTemplateOperator(
        task_id=task_id,
        body=_template(f"['{body}']"),
        project_id=_template("['project']"),
        location=_template("['region']"),
        append_job_name=True,
        retries=0,
    )


def exports_ready(plan: dict) -> bool:
    """Sensor callable: True once every (grid, year) export of the run has its mixer in the bucket."""
    names = GCSHook().list(plan["exports_bucket"], prefix=plan["exports_prefix"], match_glob="**/*mixer.json")
    missing = missing_exports(names, plan["exports"], plan["grids"], plan["years"])
    if missing:
        shown = ", ".join(f"{g}/{y}" for g, y in missing[:20])
        log.info("%d export(s) not complete yet under %s: %s%s", len(missing), plan["exports"], shown,
                 " …" if len(missing) > 20 else "")
    return not missing


def stream_done(plan: dict, dag_run=None) -> bool:
    """Sensor callable: True once every grid's status file written since the DAG run started says the streaming
    job has finished it (a file left by an earlier run into the same output is not read)."""
    hook = GCSHook()
    bucket = plan["exports_bucket"]
    since = getattr(dag_run, "start_date", None) or datetime(1970, 1, 1, tzinfo=UTC)
    names = hook.list_by_timespan(bucket, timespan_start=since, timespan_end=datetime.now(UTC),
                                  prefix=plan["status_prefix"], match_glob="**/*.json")
    records = {name: json.loads(hook.download(bucket, name)) for name in names}
    waiting = stream_waiting(records, plan["grids"], plan["years"], plan["finish_incomplete"])
    if waiting:
        shown = ", ".join(f"{grid} ({why})" for grid, why in list(waiting.items())[:20])
        log.info("%d grid(s) not finished by the streaming job yet: %s%s", len(waiting), shown,
                 " …" if len(waiting) > 20 else "")
    return not waiting


class DrainDataflowJob(DataflowStopJobOperator):
    """DataflowStopJobOperator (drain_pipeline=True) whose location is templated too (the plan's region)."""

    template_fields = (*DataflowStopJobOperator.template_fields, "location")


def mining_mapper_pod(task_id: str, arguments: str, **kwargs) -> KubernetesPodOperator:
    """A pod running `mining-mapper ARGUMENTS` in the project image, in the Composer cluster."""
    return KubernetesPodOperator(
        task_id=task_id,
        name=task_id.replace("_", "-"),
        image=_template("['image']"),
        cmds=["mining-mapper"],
        arguments=arguments,
        namespace=_template("['namespace']"),
        config_file=_template("['kube_config'] or None"),
        kubernetes_conn_id="kubernetes_default",
        image_pull_policy="IfNotPresent",
        container_resources=k8s.V1ResourceRequirements(requests={"cpu": "1", "memory": "4Gi"},
                                                       limits={"memory": "8Gi"}),
        get_logs=True,
        on_finish_action="delete_pod",
        startup_timeout_seconds=900,  # the CUDA image is large: the first pull on a node takes minutes
        **kwargs,
    )


with DAG(
    dag_id="mining_mapper",
    description="Earth Engine exports → Dataflow U-Net classification and filters → Earth Engine assets",
    schedule="0 6 1 3 *",
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    params={
        "years": Param("", type="string", pattern=IDS_PATTERN,
                       description="Years, e.g. 1985-2024 (consecutive). Empty: first_year … the previous year."),
        "grids": Param("", type="string", pattern=IDS_PATTERN,
                       description="Grid ids, e.g. 1010,1200-1210. Empty: the configuration's grids."),
        "streaming": Param(None, type=["null", "boolean"],
                           description="Start the streaming job before the exports and drain it when every "
                                       "grid is filtered. Empty: the configuration's streaming (default false)."),
    },
    tags=["mining", "earthengine", "dataflow"],
) as dag:

    @task(task_id="plan", retries=0)
    def plan(params=None, logical_date=None, dag_run=None) -> dict:
        """The run's plan from the configuration Variable, the params and the run date."""
        config = Variable.get(CONFIG_VARIABLE, None, deserialize_json=True)  # 2nd: default (Airflow 2 and 3)
        if config is None:
            raise PlanError(f"Airflow Variable {CONFIG_VARIABLE!r} is not set (JSON; see mining_mapper_plan.py)")
        run_date = logical_date or getattr(dag_run, "run_after", None) or datetime.now()
        return plan_run(config, params or {}, run_date)

    @task.branch(task_id="mode")
    def mode(ti=None) -> str:
        """Streaming mode starts the streaming job first; batch mode goes straight to the exports."""
        return "start_stream" if ti.xcom_pull(task_ids="plan")["streaming"] else "ee_export"

    # retries=0: a second streaming job would write the same files: look first
    start_stream = _flex_template_job("start_stream", "stream_body")

    ee_export = mining_mapper_pod("ee_export", _template("['export_args']"),
                                  execution_timeout=timedelta(hours=50),
                                  trigger_rule="none_failed_min_one_success")  # after mode or start_stream

    @task.branch(task_id="after_export")
    def after_export(ti=None) -> str:
        """Batch mode waits for every export, then classifies; streaming mode waits for the job's grids."""
        return "wait_for_stream" if ti.xcom_pull(task_ids="plan")["streaming"] else "wait_for_exports"

    wait_for_exports = PythonSensor(
        task_id="wait_for_exports",
        python_callable=exports_ready,
        op_kwargs={"plan": _template("")},
        mode="reschedule",
        poke_interval=600,
        timeout=timedelta(days=3).total_seconds(),
    )

    # retries=0: a failed Dataflow job is looked at, not relaunched blindly (it rewrites every COG)
    classify = _flex_template_job("classify", "flex_body")

    wait_for_stream = PythonSensor(
        task_id="wait_for_stream",
        python_callable=stream_done,
        op_kwargs={"plan": _template("")},
        mode="reschedule",
        poke_interval=600,
        timeout=timedelta(days=10).total_seconds(),  # the exports (days) and the series timeout
    )

    drain_stream = DrainDataflowJob(
        task_id="drain_stream",
        job_id="{{ ti.xcom_pull(task_ids='start_stream', key='job_id') }}",
        project_id=_template("['project']"),
        location=_template("['region']"),
        drain_pipeline=True,
        stop_timeout=3600,  # draining finishes the work in flight
        # also when the exports or the wait failed (the job would run on, idle): skipped only in batch mode
        trigger_rule="none_skipped",
    )

    ingest_cogs = mining_mapper_pod("ingest_cogs", _template("['ingest_args']"),
                                    execution_timeout=timedelta(hours=24),
                                    trigger_rule="none_failed_min_one_success")  # after classify or drain_stream

    @task.short_circuit(task_id="has_poststeps")
    def has_poststeps(ti=None) -> bool:
        """Skip the Earth Engine post-steps when the configuration asks for none."""
        return bool(ti.xcom_pull(task_ids="plan")["poststeps_args"])

    ee_poststeps = mining_mapper_pod("ee_poststeps", _template("['poststeps_args']"),
                                     execution_timeout=timedelta(hours=24))

    branch, branch_after = mode(), after_export()
    plan() >> branch >> [start_stream, ee_export]
    start_stream >> ee_export >> branch_after >> [wait_for_exports, wait_for_stream]
    wait_for_exports >> classify >> ingest_cogs
    wait_for_stream >> drain_stream >> ingest_cogs
    wait_for_stream >> ingest_cogs  # a drain after a failed wait does not let the ingest run
    ingest_cogs >> has_poststeps() >> ee_poststeps
