"""Cloud Composer (Airflow) DAG: the yearly mining collection, end to end.

    plan → ee_export → wait_for_exports → classify → ingest_cogs → has_poststeps → ee_poststeps

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

Schedule: every 1 March (Landsat Collection 2 Tier 1 scenes of December have landed by then), processing
first_year … the previous year. Manual runs take `years` and `grids` as params. No secrets: every Google
call uses the environment's service account (Workload Identity for the pods), which needs Earth Engine,
Dataflow, Storage and Artifact Registry access.

Deploy: copy this file and `mining_mapper_plan.py` to the environment's dags/ folder.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from kubernetes.client import models as k8s
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.google.cloud.hooks.gcs import GCSHook
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator

try:  # Airflow 3
    from airflow.sdk import DAG, Param, Variable, task
    from airflow.providers.standard.sensors.python import PythonSensor
except ImportError:  # Airflow 2.x (Composer 2)
    from airflow import DAG
    from airflow.decorators import task
    from airflow.models import Variable
    from airflow.models.param import Param
    from airflow.sensors.python import PythonSensor

from mining_mapper_plan import PlanError, missing_exports, plan_run

CONFIG_VARIABLE = "mining_mapper"
IDS_PATTERN = r"^$|^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$"

log = logging.getLogger(__name__)


def _template(expression: str) -> str:
    """A Jinja template of one key of the plan's XCom (rendered as a native object: lists and dicts stay so)."""
    return "{{ ti.xcom_pull(task_ids='plan')" + expression + " }}"


def exports_ready(plan: dict) -> bool:
    """Sensor callable: True once every (grid, year) export of the run has its mixer in the bucket."""
    names = GCSHook().list(plan["exports_bucket"], prefix=plan["exports_prefix"], match_glob="**/*mixer.json")
    missing = missing_exports(names, plan["exports"], plan["grids"], plan["years"])
    if missing:
        shown = ", ".join(f"{g}/{y}" for g, y in missing[:20])
        log.info("%d export(s) not complete yet under %s: %s%s", len(missing), plan["exports"], shown,
                 " …" if len(missing) > 20 else "")
    return not missing


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

    ee_export = mining_mapper_pod("ee_export", _template("['export_args']"),
                                  execution_timeout=timedelta(hours=50))

    wait_for_exports = PythonSensor(
        task_id="wait_for_exports",
        python_callable=exports_ready,
        op_kwargs={"plan": _template("")},
        mode="reschedule",
        poke_interval=600,
        timeout=timedelta(days=3).total_seconds(),
    )

    classify = DataflowStartFlexTemplateOperator(
        task_id="classify",
        body=_template("['flex_body']"),
        project_id=_template("['project']"),
        location=_template("['region']"),
        append_job_name=True,
        retries=0,  # a failed Dataflow job is looked at, not relaunched blindly (it rewrites every COG)
    )

    ingest_cogs = mining_mapper_pod("ingest_cogs", _template("['ingest_args']"),
                                    execution_timeout=timedelta(hours=24))

    @task.short_circuit(task_id="has_poststeps")
    def has_poststeps(ti=None) -> bool:
        """Skip the Earth Engine post-steps when the configuration asks for none."""
        return bool(ti.xcom_pull(task_ids="plan")["poststeps_args"])

    ee_poststeps = mining_mapper_pod("ee_poststeps", _template("['poststeps_args']"),
                                     execution_timeout=timedelta(hours=24))

    plan() >> ee_export >> wait_for_exports >> classify >> ingest_cogs >> has_poststeps() >> ee_poststeps
