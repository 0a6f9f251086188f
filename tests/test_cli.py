"""The command-line surface: strict flags for `run`, one vocabulary and spelling rule, defaults in --help,
quiet output with progress, the model checked before reading."""
from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys

import apache_beam as beam
from apache_beam import typehints
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.run as run_module
from pipeline.cli import build_parser, main
from pipeline.console import QUIET, VERBOSE, configure_logging, run_table
from pipeline.errors import UserError
from pipeline.flags import HelpFormatter, check_run_argv, closest, normalise_argv
from pipeline.modelcheck import check_model_location
from pipeline.options import MiningMapperOptions, build_config, option_names
from pipeline.elements import GridYearStatus
from transforms.progress import LogProgress, progress_line
from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT
METADATA = json.loads((ROOT / "templates" / "metadata.json").read_text(encoding="utf-8"))
BASE = ["--exports", "gs://b/e", "--output", "gs://b/o", "--model", "gs://b/m", "--grids", "1", "--years", "2000"]


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every (nested) command parser, by its prog."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found[sub.prog] = sub
                found.update(subparsers(sub))
    return found


COMMANDS = subparsers(build_parser())


def command_keys(prog: str) -> set[str]:
    """The spelling-independent names of a command's flags."""
    return {o.lstrip("-").replace("-", "_") for o in COMMANDS[prog]._option_string_actions if o.startswith("--")}


def run_option_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    MiningMapperOptions._add_argparse_args(parser)
    return parser


# --- 1. strict flags ------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, named, suggested", [
    (["--thresold", "0.9"], "--thresold", "--threshold"),
    (["--min-compnent-size", "5"], "--min-compnent-size", "--min_component_size"),
    (["--min_component_sise=5"], "--min_component_sise=5", "--min_component_size"),
    (["--filter-mod", "c9-code"], "--filter-mod", "--filter_mode"),
    (["--band-presets", "c9-code"], "--band-presets", "--band_preset"),
    (["--preset", "c9-code"], "--preset", "--band_preset"),  # an old name: its new one is suggested
    (["--temp-locaton", "gs://t"], "--temp-locaton", "--temp_location"),  # Beam's flags are checked too
])
def test_run_refuses_unknown_flags_naming_the_closest(extra, named, suggested):
    with pytest.raises(UserError) as error:
        check_run_argv(BASE + extra)
    assert str(error.value) == f"unrecognised argument: {named} (did you mean {suggested}?)"


def test_run_refuses_a_stray_value_and_a_bad_value():
    with pytest.raises(UserError, match=r"^unexpected value 'extra': every value follows the flag it belongs to$"):
        check_run_argv(BASE + ["extra"])
    with pytest.raises(UserError, match=r"argument --threshold: invalid float value: 'high'"):
        check_run_argv(BASE + ["--threshold", "high"])
    with pytest.raises(UserError, match=r"argument --probability_band/--no_probability_band: invalid choice: 'maybe'"):
        check_run_argv(BASE + ["--probability_band", "maybe"])


def test_run_flag_errors_exit_2_before_anything_runs(monkeypatch, capsys):
    def trap(*args, **kwargs):
        raise AssertionError("the pipeline started")

    monkeypatch.setattr(run_module.beam, "Pipeline", trap)
    monkeypatch.setattr(run_module, "build_config", trap)
    assert main(["run", *BASE, "--thresold", "0.9", "--min-component-size", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mining-mapper run: error: unrecognised argument: --thresold (did you mean --threshold?)"


def test_beam_and_dataflow_flags_pass_and_both_spellings_reach_the_options():
    argv = check_run_argv(BASE + [
        "--runner", "DataflowRunner", "--project", "p", "--region", "europe-west1", "--temp-location", "gs://t",
        "--num_workers", "3", "--experiments", "use_runner_v2", "--no_wait_until_finish", "--direct_num_workers", "1",
        "--min-component-size", "20", "--band-preset=c9-code", "--filter_mode", "c9-code", "--spatial-window", "5",
        "--backfill-limit", "2", "--frequency-cut", "12.5", "--max-batch-size", "8",
    ])
    assert "--temp_location" in argv and "--band_preset=c9-code" in argv and "--min_component_size" in argv
    config = build_config(PipelineOptions(argv))
    params = config.filter_params
    assert (params.min_component_size, params.spatial_window, params.backfill_limit, params.frequency_cut_percent) == (20, 5, 2, 12.5)
    assert config.band_preset == "c9-code" and params.mode == "c9-code" and config.max_batch_size == 8


@pytest.mark.parametrize("flags, expected", [
    ([], False),
    (["--probability_band", "true"], True),  # as the Flex Template launcher passes it
    (["--probability_band=true"], True),
    (["--probability_band=false"], False),
    (["--probability-band"], True),
    (["--probability_band"], True),
    (["--probability-band", "--no-probability-band"], False),
    (["--no_probability_band"], False),
])
def test_true_false_flags_are_switches_and_values(flags, expected):
    assert build_config(PipelineOptions(check_run_argv(BASE + flags))).probability_band is expected


def test_a_negated_switch_takes_no_value():
    with pytest.raises(UserError, match="--no-origin-band: takes no value|--no_origin_band: takes no value"):
        build_config(PipelineOptions(check_run_argv(BASE + ["--no-origin-band", "false"])))


# --- 2. one vocabulary ----------------------------------------------------------------------------------

CONCEPTS = {  # concept → its one name (key form), and the commands that take it
    "band_preset": ["export", "sample", "train"],
    "filter_mode": ["filter", "ee-poststeps", "ingest"],
    "min_component_size": ["filter", "ee-poststeps"],
    "spatial_window": ["filter", "ee-poststeps"],
    "backfill_limit": ["filter"],
    "frequency_cut": ["filter"],
    "grids": ["export", "ee-poststeps", "sample"],
    "land_cover": ["integrate", "ee-poststeps"],
    "class_value": ["filter", "stats", "integrate", "classify-type", "report"],
}
OLD_NAMES = ("preset", "mode", "min_size", "window", "landcover", "mining_value", "grid_ids")


@pytest.mark.parametrize("concept", sorted(CONCEPTS))
def test_one_name_per_concept_across_commands(concept):
    for command in CONCEPTS[concept]:
        keys = command_keys(f"mining-mapper {command}")
        wanted = "class_id" if command == "report" and concept == "class_value" else concept
        assert wanted in keys, f"{command} lacks --{wanted}"
    run_keys = set(option_names())
    if concept in ("band_preset", "filter_mode", "min_component_size", "spatial_window", "backfill_limit", "frequency_cut", "grids"):
        assert concept in run_keys


def test_no_command_keeps_an_old_name():
    for prog in COMMANDS:
        assert not set(OLD_NAMES) & command_keys(prog), prog


def test_flex_template_parameters_are_run_flags_in_both_spellings():
    names = [p["name"] for p in METADATA["parameters"]]
    assert set(names) == set(option_names())
    actions = {a.dest: a for a in run_option_parser()._actions}
    for name in names:
        value = actions[name].choices[0] if actions[name].choices else "1"
        assert check_run_argv([f"--{name}={value}"]) == [f"--{name}={value}"]  # the launcher's spelling, unchanged
        assert check_run_argv([f"--{name.replace('_', '-')}={value}"]) == [f"--{name}={value}"]


def test_every_command_takes_both_spellings():
    parser = build_parser()
    args, extra = parser.parse_known_args(["filter", "in", "--output", "o", "--min_component_size", "20",
                                           "--filter_mode", "c9-code", "--class_value", "3", "--origin_band"])
    assert not extra and (args.min_component_size, args.filter_mode, args.class_value, args.origin_band) == (20, "c9-code", 3, True)
    args, _ = parser.parse_known_args(["sample", "--output", "o", "--grids", "1137,1200-1201", "--band_preset", "c9-code"])
    assert (args.grids, args.band_preset) == ("1137,1200-1201", "c9-code")
    args, _ = parser.parse_known_args(["accuracy", "estimate", "s.csv", "--design", "d", "--output", "o", "--drop_unlabelled", "--no-fpc"])
    assert args.drop_unlabelled is True and args.fpc is False


def test_unknown_flags_of_other_commands_name_the_closest(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["filter", "in", "--output", "o", "--mode", "c9-code"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().endswith("error: unrecognised argument: --mode (did you mean --filter-mode?)")


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_normalise_gives_the_declared_spelling(data):
    """Against a simple reference: any -/_ re-spelling of a declared flag becomes that flag; nothing else changes."""
    declared = ["--min-component-size", "--filter_mode", "--x", "--band-preset", "--temp_location"]
    tokens, expected = [], []
    for _ in range(data.draw(st.integers(0, 6))):
        if data.draw(st.booleans()):
            flag = data.draw(st.sampled_from(declared))
            spelt = "--" + "".join(data.draw(st.sampled_from("-_")) if c in "-_" else c for c in flag[2:])
            value = data.draw(st.sampled_from(["", "=3", "=a-b_c"]))
            tokens.append(spelt + value)
            expected.append(flag + value)
        else:
            token = data.draw(st.sampled_from(["value", "a_b-c", "--unknown-flag", "--unknown_flag=1", "-v", "5"]))
            tokens.append(token)
            expected.append(token)
    assert normalise_argv(tokens, declared) == expected
    assert normalise_argv([*tokens, "--", "--filter-mode"], declared) == [*expected, "--", "--filter-mode"]


def test_closest_flag():
    known = ["--threshold", "--min_component_size", "--band_preset"]
    assert closest("--thresold", known) == "--threshold"
    assert closest("--min-component_sizes=3", known) == "--min_component_size"
    assert closest("--zzz", known) is None


# --- every --help shows every default -------------------------------------------------------------------

def _help_lines(parser: argparse.ArgumentParser) -> dict[str, str]:
    formatter = HelpFormatter(parser.prog)
    lines = {}
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        text = formatter._get_help_string(action)
        lines[action.option_strings[-1]] = text % {"default": action.default, "prog": parser.prog}
    return lines


@pytest.mark.parametrize("prog", sorted(COMMANDS) + ["mining-mapper run (pipeline options)"])
def test_every_help_states_every_default(prog):
    parser = run_option_parser() if prog.endswith("(pipeline options)") else COMMANDS[prog]
    parser.format_help()  # renders without error
    for flag, text in _help_lines(parser).items():
        assert "default" in text.lower() or text.endswith("required)"), f"{prog} {flag}: {text!r}"


def test_help_defaults_are_the_real_ones(capsys):
    run_module.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.5)" in text and "(default: appendix)" in text and "(default: false)" in text
    lines = _help_lines(COMMANDS["mining-mapper filter"])
    assert lines["--prefix"].endswith("(default 'mining')") and lines["--origin-band"].endswith("(default: off)")
    assert lines["--output"].endswith("(required)")


# --- 3. quiet by default, progress, the table, the model check -----------------------------------------

def test_progress_line():
    status = GridYearStatus("1200", 2003, "written")
    assert progress_line(status, 1137, 2004, 27, 78, 41.4) == "written 1137/2004 (27/78, 41 s)  1200 2003"
    skipped = GridYearStatus("7", 1990, "skipped", reason="no export found")
    assert progress_line(skipped, 1, 2, 0, 1, 0.2) == "skipped 1/2 (0/1, 0 s)  7 1990: no export found"


def test_progress_logs_one_line_per_grid_year_on_the_local_runner(caplog):
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    asked = [("1", 2000), ("1", 2001), ("2", 2000), ("2", 2001)]
    statuses = [GridYearStatus(g, y, "written") for g, y in asked]
    with caplog.at_level(logging.INFO, logger="transforms.progress"), beam.Pipeline(runner=FnApiRunner()) as p:
        _ = p | beam.Create(statuses).with_output_types(typehints.Any) | LogProgress(asked)
    lines = [r.getMessage() for r in caplog.records if r.name == "transforms.progress"]
    assert [line.split("  ")[0].split(" (")[0] for line in lines] == [f"written {i}/4" for i in range(1, 5)]
    assert lines[-1].startswith("written 4/4 (2/2, ")
    assert sorted(line.split("  ")[1] for line in lines) == ["1 2000", "1 2001", "2 2000", "2 2001"]


def test_progress_adds_nothing_on_a_distributed_runner():
    from apache_beam.runners.runner import PipelineRunner

    class RemoteRunner(PipelineRunner):  # stands for Dataflow: the pipeline is only built, never run
        pass

    p = beam.Pipeline(runner=RemoteRunner(), options=PipelineOptions([]))
    statuses = p | beam.Create([GridYearStatus("1", 2000, "written")]).with_output_types(typehints.Any)
    before = len(p.transforms_stack[0].parts)
    assert isinstance(statuses | LogProgress([("1", 2000)]), beam.pvalue.PDone)
    assert len(p.transforms_stack[0].parts) == before + 1  # the composite alone, with nothing inside
    assert p.transforms_stack[0].parts[-1].parts == []


def test_run_table():
    summary = {
        "output": "/out",
        "counts": {"written": 3, "skipped": 1},
        "dead_letters": 0,
        "grid_years": [
            {"grid": "1", "year": 2000, "status": "written", "mining_ha": {"input": 9.0, "frequency": 1.25}},
            {"grid": "2", "year": 2000, "status": "skipped", "reason": "no export found"},
            {"grid": "1", "year": 2001, "status": "written", "mining_ha": {"input": 5.0, "frequency": 2.5}},
            {"grid": "2", "year": 2001, "status": "written", "mining_ha": {"input": 1.0, "spatial": 1000.0}},
        ],
    }
    assert run_table(summary) == (
        "written      3/4\n"
        "skipped      1/4\n"
        "failed       0/4\n"
        "mining 2000  1.2 ha (1/2 grids)\n"
        "mining 2001  1,002.5 ha (2/2 grids)\n"
        "COGs         /out/{grid}/{grid}_{year}.tif\n"
        "summary      /out/summary.json"
    )


def test_verbosity_levels():
    try:
        configure_logging(QUIET)
        assert logging.getLogger().level == logging.ERROR and logging.getLogger("pipeline").level == logging.ERROR
        configure_logging()
        assert logging.getLogger().level == logging.WARNING and logging.getLogger("transforms").level == logging.INFO
        assert logging.getLogger("apache_beam").getEffectiveLevel() == logging.WARNING
        configure_logging(VERBOSE)
        assert logging.getLogger().level == logging.INFO and logging.getLogger("pipeline").level == logging.DEBUG
    finally:
        configure_logging()


def test_model_location_is_checked(tmp_path):
    with pytest.raises(UserError, match=r"^--model .*absent\.keras: not found; expected a \.keras/\.h5 file"):
        check_model_location(str(tmp_path / "absent.keras"))
    (tmp_path / "folder.keras").mkdir()  # there, but not a readable file
    with pytest.raises(UserError, match=r"^--model .*folder\.keras: cannot read .*folder\.keras \("):
        check_model_location(str(tmp_path / "folder.keras"))
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"x")
    with pytest.raises(UserError, match=r"^--model .*saved: no model_card\.json; expected"):
        check_model_location(str(tmp_path / "saved"))
    (tmp_path / "saved" / "model_card.json").write_text("{}")
    check_model_location(str(tmp_path / "saved"))


def test_a_missing_model_stops_the_run_before_reading(tmp_path, monkeypatch, capsys):
    def trap(*args, **kwargs):
        raise AssertionError("the pipeline started reading")

    monkeypatch.setattr(run_module, "MiningMapperJob", trap)
    monkeypatch.setattr(run_module.beam, "Pipeline", trap)
    monkeypatch.setattr(run_module, "import_tensorflow_quietly", lambda: None)
    argv = ["--exports", str(tmp_path), "--output", str(tmp_path / "out"), "--model", str(tmp_path / "m.keras"),
            "--grids", "1", "--years", "2000"]
    assert main(["run", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"mining-mapper run: error: --model {tmp_path / 'm.keras'}: not found")


def test_a_local_run_prints_progress_and_a_table_and_nothing_else(tmp_path):
    """The whole command in a fresh process: no TensorFlow/absl/CUDA chatter, no Beam INFO, one line per grid-year."""
    from tests.support.synthetic_run import stand_in_model, truth_stack, write_exports

    write_exports(tmp_path / "exports", truth_stack(4))
    model = stand_in_model(str(tmp_path / "model.keras"))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "--exports", str(tmp_path / "exports"), "--output",
         str(tmp_path / "out"), "--model", model, "--max-batch-size", "4", "--direct_num_workers", "1", "--years", "2000-2002"],
        check=False, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    err = result.stderr.splitlines()
    assert err[0] == "running 1 grid(s) × 3 year(s) on FnApiRunner"
    assert [re.sub(r", \d+ s\)", ", T s)", line) for line in err[1:]] == [
        "written 1/3 (0/1, T s)  1010 2000", "written 2/3 (0/1, T s)  1010 2001", "written 3/3 (1/1, T s)  1010 2002"]
    out = result.stdout.splitlines()
    assert out[:5] == ["written      3/3", "skipped      0/3", "failed       0/3", "inferred     3/3", "reused       0/3 (raw results)"]
    assert out[5].startswith("mining 2000  ") and out[6].startswith("mining 2002  ")
    assert out[7:] == [f"COGs         {tmp_path}/out/{{grid}}/{{grid}}_{{year}}.tif", f"summary      {tmp_path}/out/summary.json",
                       f"raw results  {tmp_path}/out/raw/{{grid}}/{{grid}}_{{year}}.tif"]


def test_run_prints_its_table_unless_quiet(monkeypatch, capsys):
    summary = {"output": "/o", "counts": {"written": 1}, "grid_years": [
        {"grid": "1", "year": 2000, "status": "written", "mining_ha": {"frequency": 2.0}}]}
    monkeypatch.setattr(run_module, "run", lambda argv: summary)
    assert run_module.main(["--exports", "e"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "written      1/1"
    assert run_module.main(["--exports", "e", "-q"]) == 0
    assert main(["-q", "run", "--exports", "e"]) == 0
    assert capsys.readouterr() == ("", "")
    monkeypatch.setattr(run_module, "run", lambda argv: {"summary": "gs://o/summary.json", "job": "2026-11-30_1"})
    assert main(["run", "--runner", "DataflowRunner"]) == 0
    assert capsys.readouterr().out == "submitted job 2026-11-30_1; summary will be at gs://o/summary.json\n"
    configure_logging()
