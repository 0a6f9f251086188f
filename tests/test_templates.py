"""The launch surfaces as files: Flex Template metadata, the image's Dockerfile, Cloud Build, the entry point.

No Docker engine and no Cloud here, so these check what can be checked offline: the metadata's parameters
are exactly the pipeline options (both directions) and each is documented with working regexes; the
Dockerfile pins the Beam SDK of setup.py, a CUDA/cuDNN base matching the TensorFlow wheel's build, runs as
non-root and wires the Flex Template; cloudbuild.yaml parses and uses its substitutions; the entry point
hands the launcher's `--name=value` arguments to the pipeline.
"""
from __future__ import annotations

import ast
import argparse
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import UserError
from pipeline.flags import check_run_argv
from pipeline.options import MiningMapperOptions, option_names
from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT
TEMPLATES = ROOT / "templates"
METADATA = json.loads((TEMPLATES / "metadata.json").read_text(encoding="utf-8"))
PARAMETERS = {p["name"]: p for p in METADATA["parameters"]}
GS_PATH = r"^gs:\/\/[^\n\r]+$"


def option_actions() -> dict[str, argparse.Action]:
    """The argparse actions of the pipeline options, by name."""
    parser = argparse.ArgumentParser()
    MiningMapperOptions._add_argparse_args(parser)
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile: continuations joined, comment lines dropped."""
    instructions, current = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        keyword, _, rest = current.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(rest.split())))
        current = ""
    return instructions


DOCKERFILE = dockerfile_instructions((TEMPLATES / "Dockerfile").read_text(encoding="utf-8"))


def docker_args() -> dict[str, str]:
    """The global ARG defaults (before the first FROM)."""
    args = {}
    for keyword, rest in DOCKERFILE:
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
    return args


def expand(text: str, args: dict[str, str]) -> str:
    """${NAME} substituted from `args`."""
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)


def setup_py_pins() -> dict[str, str]:
    """`name==version` pins of setup.py's INSTALL_REQUIRES (read without running setup.py)."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    pins = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "INSTALL_REQUIRES" for t in node.targets):
            for item in ast.literal_eval(node.value):
                if "==" in item:
                    name, version = item.split("==")
                    pins[re.sub(r"\[.*\]", "", name).lower()] = version
    return pins


# --- metadata.json --------------------------------------------------------------------------------------

def test_metadata_parameters_are_exactly_the_pipeline_options():
    names = [p["name"] for p in METADATA["parameters"]]
    assert len(names) == len(set(names)), "a parameter is declared twice"
    assert set(names) == set(option_names()), (
        f"only in metadata: {sorted(set(names) - set(option_names()))}; "
        f"only in options: {sorted(set(option_names()) - set(names))}")


def test_dag_plan_declares_the_same_template_parameters():
    spec = importlib.util.spec_from_file_location("plan_for_test", TEMPLATES / "composer" / "mining_mapper_plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.TEMPLATE_PARAMETERS) == set(option_names())


def test_every_parameter_is_documented():
    assert METADATA["name"].strip() and len(METADATA["description"]) > 40
    actions = option_actions()
    for name, parameter in PARAMETERS.items():
        assert parameter["label"].strip(), name
        assert len(parameter["helpText"].strip()) >= 20, name
        assert isinstance(parameter["isOptional"], bool), name
        assert parameter["regexes"], f"{name}: no regex"
        # required in the template ⇔ no usable default in the options
        assert parameter["isOptional"] == (actions[name].default is not None), name


def test_regexes_compile_and_accept_every_option_default_and_choice():
    actions = option_actions()
    for name, parameter in PARAMETERS.items():
        patterns = [re.compile(r) for r in parameter["regexes"]]
        action = actions[name]
        samples = list(action.choices or [])
        if action.default not in (None, ""):
            samples.append(str(action.default))
        for value in samples:
            assert all(p.match(value) for p in patterns), f"{name}: regex refuses {value!r}"
        if action.choices:  # an enum: the regex admits the choices and nothing else
            assert all(p.match(value) is None for p in patterns for value in ("", "APPENDIX", "other", "true1")), name


@pytest.mark.parametrize("name, good, bad", [
    ("exports", ["gs://bucket/exports", "gs://b/a b/c"], ["/local/exports", "s3://b/x", "gs://", "gs://b\nx"]),
    ("output", ["gs://bucket/cogs/2024"], ["bucket/cogs", "https://storage.googleapis.com/b"]),
    ("model", ["gs://bucket/models/national", "gs://b/m.keras"], ["models/national"]),
    ("model_routing", ["gs://bucket/routing.json"], ["routing.json"]),
    ("grids", ["1010", "1010,1200-1210", " 5 - 7 , 9 "], ["10a", "1010,", "-5", "1-2-3", "all"]),
    ("years", ["1985-2024", "2000,2001", "2000 - 2003"], ["85-24", "1985-", "2000,,2001", "twenty"]),
    ("threshold", ["0.5", ".35", "0.05", "0.999"], ["0", "0.0", "1", "1.0", "1.5", "-0.5", "abc"]),
    ("min_component_size", ["1", "10", "250"], ["0", "-1", "1.5", ""]),
    ("spatial_window", ["1", "3", "5", "11"], ["2", "4", "0", "-3"]),
    ("backfill_limit", ["0", "3"], ["-1", "a"]),
    ("frequency_cut", ["0", "10", "10.5", "100", "100.0"], ["101", "100.5", "-1", "ten"]),
    ("c9_backfill_from_index", ["0", "32"], ["-1", "3.2"]),
    ("min_batch_size", ["1", "16"], ["0", "-4"]),
    ("max_batch_size", ["1", "64"], ["0", "8.5"]),
    ("export_nodata", ["-9999", "0", "-9999,65535", "-1.5, 3"], ["", "nan", "1,,2", "a"]),
    ("band_preset", ["appendix", "c9-code"], ["c9", "appendix,c9-code"]),
    ("filter_mode", ["appendix", "c9-code"], ["C9-code"]),
    ("spatial_filter", ["local", "earthengine", "off"], ["ee", "none"]),
    ("require_gpu", ["true", "false"], ["True", "1", "yes"]),
])
def test_regexes_accept_and_reject_samples(name, good, bad):
    patterns = [re.compile(r) for r in PARAMETERS[name]["regexes"]]
    for value in good:
        assert all(p.match(value) for p in patterns), f"{name} refuses {value!r}"
    for value in bad:
        assert not all(p.match(value) for p in patterns), f"{name} accepts {value!r}"


def test_accepted_values_are_accepted_by_the_pipeline_too():
    """What the template's regexes let through, the options parser and build_config accept (spot checks)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.options import build_config

    argv = ["--exports=gs://b/e", "--output=gs://b/o", "--model=gs://b/m", "--grids= 5 - 7 , 9 ",
            "--years=2000 - 2003", "--threshold=.35", "--spatial_window=5", "--frequency_cut=100.0",
            "--export_nodata=-1.5, 3", "--require_gpu=false"]
    for arg in argv:
        name, value = arg[2:].split("=", 1)
        assert all(re.match(r, value) for r in PARAMETERS[name]["regexes"]), arg
    config = build_config(PipelineOptions(argv))
    assert config.grids == ("5", "6", "7", "9") and config.years == (2000, 2001, 2002, 2003)
    assert config.threshold == 0.35 and config.export_nodata == (-1.5, 3.0)


def test_gs_paths_use_the_gs_regex():
    for name in ("exports", "output", "model", "model_routing"):
        assert PARAMETERS[name]["regexes"] == [GS_PATH], name


# --- Dockerfile -----------------------------------------------------------------------------------------

def test_dockerfile_beam_and_python_match_setup_py():
    args = docker_args()
    assert args["BEAM_VERSION"] == setup_py_pins()["apache-beam"]
    python_requires = re.search(r'python_requires="([^"]+)"', (ROOT / "setup.py").read_text()).group(1)
    assert python_requires == f">={args['PYTHON_VERSION']},<3.{int(args['PYTHON_VERSION'].split('.')[1]) + 1}"
    stages = {rest.split(" AS ")[-1]: expand(rest.split(" AS ")[0], args) for kw, rest in DOCKERFILE
              if kw == "FROM" and " AS " in rest}
    assert stages["beam_sdk"] == f"apache/beam_python{args['PYTHON_VERSION']}_sdk:{setup_py_pins()['apache-beam']}"
    assert stages["template_launcher"].startswith(
        "gcr.io/dataflow-templates-base/python" + args["PYTHON_VERSION"].replace(".", "") + "-template-launcher-base")
    copies = [rest for kw, rest in DOCKERFILE if kw == "COPY"]
    assert "--from=beam_sdk /opt/apache/beam /opt/apache/beam" in copies
    assert ("--from=template_launcher /opt/google/dataflow/python_template_launcher "
            "/opt/google/dataflow/python_template_launcher") in copies
    assert ("ENTRYPOINT", '["/opt/apache/beam/boot"]') in DOCKERFILE


def test_dockerfile_cuda_base_matches_the_tensorflow_build():
    """The TensorFlow wheel records the CUDA and cuDNN it was built with; the base image must provide those."""
    spec = importlib.util.find_spec("tensorflow")  # locates the package without importing it
    build_info = Path(spec.submodule_search_locations[0]) / "python" / "platform" / "build_info.py"
    info = dict(ast.literal_eval(re.search(r"OrderedDict\((\[.*\])\)", build_info.read_text()).group(1)))
    assert setup_py_pins()["tensorflow"] == importlib.metadata.version("tensorflow")  # the wheel read is setup.py's
    base = docker_args()["CUDA_IMAGE"]
    match = re.fullmatch(r"nvidia/cuda:(\d+\.\d+\.\d+)-cudnn(\d*)-runtime-ubuntu\d+\.\d+", base)
    assert match, base
    assert match.group(1) == info["cuda_version"]
    # NVIDIA's CUDA ≥ 12.4 images name cuDNN 9 plain "cudnn"; older ones spell the major ("cudnn8").
    assert (match.group(2) or "9") == str(info["cudnn_version"])


def test_dockerfile_installs_with_constraints_checks_and_runs_as_non_root():
    runs = " ".join(rest for kw, rest in DOCKERFILE if kw == "RUN")
    assert "-c constraints.txt ." in runs and "pip check" in runs
    assert "--no-deps -c constraints.txt ." in runs  # the project layer cannot change a dependency
    users = [rest for kw, rest in DOCKERFILE if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    final_stage = DOCKERFILE[max(i for i, (kw, _) in enumerate(DOCKERFILE) if kw == "FROM"):]
    assert any(kw == "USER" for kw, _ in final_stage)


def test_dockerfile_flex_template_environment_points_at_copied_files():
    env = {}
    for keyword, rest in DOCKERFILE:
        if keyword == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    assert env["FLEX_TEMPLATE_PYTHON_PY_FILE"] == "/template/main.py"
    assert env["FLEX_TEMPLATE_PYTHON_SETUP_FILE"] == "/template/setup.py"
    assert env["RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT"] == "1"
    copies = [rest for kw, rest in DOCKERFILE if kw == "COPY"]
    assert any(c.endswith("templates/main.py ./main.py") for c in copies)
    assert any(c.endswith("setup.py constraints.txt ./") for c in copies)
    workdirs = [rest for kw, rest in DOCKERFILE if kw == "WORKDIR"]
    assert workdirs[-1] == "/template"
    for package in ("pipeline", "transforms", "model"):
        assert any(c.endswith(f"{package} ./{package}") for c in copies), package
        assert (ROOT / package / "__init__.py").exists()


# --- cloudbuild.yaml ------------------------------------------------------------------------------------

def test_cloudbuild_parses_and_uses_its_substitutions():
    build = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text(encoding="utf-8"))
    substitutions = build["substitutions"]
    for name in ("_PROJECT", "_REGION", "_REPOSITORY", "_IMAGE", "_TEMPLATE_BUCKET"):
        assert name in substitutions, name
    text_of_steps = json.dumps(build["steps"]) + json.dumps(build.get("images", []))
    for name in substitutions:
        assert "${" + name + "}" in text_of_steps or "$" + name in text_of_steps, f"{name} is never used"
    used = set(re.findall(r"\$\{(_[A-Z0-9_]+)\}", text_of_steps))
    assert used <= set(substitutions), f"undefined substitutions {sorted(used - set(substitutions))}"
    ids = [step["id"] for step in build["steps"]]
    assert ids == ["test", "build-image", "push-image", "flex-template"]
    steps = {step["id"]: step for step in build["steps"]}
    assert "make test" in " ".join(steps["test"]["args"]) and steps["test"]["name"].startswith("python:3.11")
    assert "templates/Dockerfile" in steps["build-image"]["args"]
    assert set(steps["push-image"]["waitFor"]) == {"test", "build-image"}  # nothing is pushed untested
    flex = " ".join(steps["flex-template"]["args"])
    assert "flex-template build" in flex and "--metadata-file templates/metadata.json" in flex
    assert "--sdk-language PYTHON" in flex


# --- the entry point ------------------------------------------------------------------------------------

def test_entry_point_hands_launcher_arguments_to_the_pipeline():
    """The launcher runs `python main.py --name=value …`; a bad value ends it with status 2 and the reason."""
    result = subprocess.run(
        [sys.executable, str(TEMPLATES / "main.py"), "--exports=gs://b/e", "--output=gs://b/o",
         "--model=gs://b/m", "--grids=1010", "--years=2000-2001", "--threshold=1.5"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--threshold must be strictly between 0 and 1, not 1.5" in result.stderr


def _entry_point_module():
    """templates/main.py as a module (it is a script in the image, not part of a package)."""
    spec = importlib.util.spec_from_file_location("flex_main_for_test", TEMPLATES / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("launches, expected", [
    # submit without waiting: --no_wait_until_finish added once
    ([["--exports=gs://b/e", "--runner=DataflowRunner"], ["--no_wait_until_finish", "--output=gs://b/o"]],
     [["--exports=gs://b/e", "--runner=DataflowRunner", "--no_wait_until_finish"],
      ["--no_wait_until_finish", "--output=gs://b/o"]]),
    # the launcher's `--streaming=true|false` reaches Beam as its switch, through the pipeline's flag check
    ([["--streaming=true", "--series_timeout=60"], ["--streaming=false", "--output=gs://b/o"]],
     [["--streaming", "--series_timeout=60", "--no_wait_until_finish"], ["--output=gs://b/o", "--no_wait_until_finish"]]),
], ids=["no-wait", "streaming"])
def test_entry_point_hands_the_pipeline_its_flags(monkeypatch, launches, expected):
    """What `pipeline.run.main` gets from the entry point, as its strict flag check leaves it."""
    import pipeline.run

    seen = []
    monkeypatch.setattr(pipeline.run, "main", lambda argv: seen.append(check_run_argv(argv)) or 0)
    main = _entry_point_module()
    for argv in launches:
        assert main.launch(argv) == 0
    assert seen == expected


# --- Beam's switches with a value (the launcher's form, and `mining-mapper run`'s) ---------------------------

@pytest.mark.parametrize("argv, expected", [
    (["--streaming=true"], ["--streaming"]),
    (["--streaming=TRUE", "--series_timeout=60"], ["--streaming", "--series_timeout=60"]),
    (["--streaming=false", "--output=gs://b/o"], ["--output=gs://b/o"]),
    (["--streaming", "False"], []),
    (["--streaming", "true", "--grids=1"], ["--streaming", "--grids=1"]),
    (["--streaming", "--streaming=false"], []),  # the last one wins
    (["--streaming=false", "--streaming"], ["--streaming"]),
    (["--no-use-public-ips=true"], ["--no_use_public_ips"]),  # a store_false switch of Dataflow's, either spelling
    (["--no_wait_until_finish=false"], []),
    (["--probability_band=false"], ["--probability_band=false"]),  # our own switches keep their value
])
def test_beam_switches_take_true_or_false(argv, expected):
    assert check_run_argv(argv) == expected


def test_a_beam_switch_with_another_value_is_refused():
    with pytest.raises(UserError, match=r"^argument --streaming: a switch: give it alone or with true\|false, not 'yes'$"):
        check_run_argv(["--streaming=yes"])


_FORMS = {  # how a user or the launcher may write the switch → whether it turns streaming on
    ("--streaming",): True, ("--streaming=true",): True, ("--streaming=True",): True, ("--streaming", "TRUE"): True,
    ("--streaming=false",): False, ("--streaming=FALSE",): False, ("--streaming", "false"): False,
}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(sorted(_FORMS)), max_size=6), st.booleans())
def test_the_last_streaming_switch_decides(forms, with_other_flag):
    """Against the plain rule: off unless given; each occurrence sets it; the last one wins; other flags untouched."""
    argv = [token for form in forms for token in ([*form, "--watch_interval=5"] if with_other_flag else form)]
    checked = check_run_argv(argv)
    assert PipelineOptions(checked).view_as(StandardOptions).streaming is (_FORMS[forms[-1]] if forms else False)
    assert checked.count("--watch_interval=5") == (len(forms) if with_other_flag else 0)


@pytest.mark.parametrize("value, streaming", [("true", True), ("false", False)])
def test_mining_mapper_run_takes_streaming_true_or_false(monkeypatch, value, streaming):
    """`mining-mapper run --streaming=true|false` is not refused by Beam's parser: it reaches the options."""
    import pipeline.run
    from pipeline.cli import main

    seen = []

    def stop(options):
        seen.append(options.view_as(StandardOptions).streaming)
        raise UserError("stopped before the network")

    monkeypatch.setattr(pipeline.run, "probe_cloud_paths", stop)
    argv = ["run", "--exports=gs://b/e", "--output=gs://b/o", "--model=gs://b/m", "--grids=1", "--years=2000-2001"]
    assert main([*argv, f"--streaming={value}"]) == 2
    assert seen == [streaming]


def test_entry_point_runs_the_whole_pipeline_locally(tmp_path):
    """Through the entry point (flag included) a local run still completes and writes every COG."""
    from tests.support.synthetic_run import YEARS, pipeline_args, stand_in_model, truth_stack, write_exports

    write_exports(tmp_path / "exports", truth_stack(4))
    model = stand_in_model(str(tmp_path / "model.keras"))
    argv = pipeline_args(tmp_path / "exports", tmp_path / "out", model)
    assert _entry_point_module().launch(argv) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["counts"] == {"written": len(YEARS)}
    assert sorted(p.name for p in (tmp_path / "out" / "1010").iterdir()) == [f"1010_{y}.tif" for y in YEARS]
