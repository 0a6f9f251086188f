"""Pipeline options: parsing, defaults found under the exports, routing, validation before running."""
from __future__ import annotations

import json

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.errors import UserError
from pipeline.options import build_config, discover_grid_years, load_routes, option_names
from pipeline.ranges import parse_int_list as parse_id_list


def config(*args, discovered=None):
    return build_config(PipelineOptions(list(args)), discovered=discovered)


BASE = ("--exports", "gs://bucket/exports", "--output", "gs://bucket/out", "--model", "gs://bucket/model.keras")


def test_id_lists_and_ranges():
    assert parse_id_list("1985-1987, 1990", "years") == [1985, 1986, 1987, 1990]
    assert parse_id_list("", "grids") == []
    with pytest.raises(UserError, match="--years: 'x' is not"):
        parse_id_list("1985,x", "years")
    with pytest.raises(UserError, match="backwards"):
        parse_id_list("1990-1985", "years")


def test_defaults_come_from_the_exports_and_gaps_are_kept_in_the_span():
    cfg = config(*BASE, discovered={"1010": [2000, 2001, 2003], "1011": [2001]})
    assert cfg.grids == ("1010", "1011") and cfg.years == (2000, 2001, 2002, 2003)
    assert cfg.grid_years()[:2] == [("1010", 2000), ("1010", 2001)] and len(cfg.grid_years()) == 8
    assert cfg.bands == ("swir1", "nir", "red", "mndwi", "ndvi", "ndsi") and cfg.threshold == 0.5
    assert cfg.filter_params.mode == "appendix" and cfg.spatial_filter == "local"


def test_explicit_selection_and_presets():
    cfg = config(*BASE, "--grids", "5-6", "--years", "1985-1986", "--band_preset", "c9-code", "--filter_mode", "c9-code",
                 "--min_component_size", "20", "--threshold", "0.7", "--max_batch_size", "32")
    assert cfg.grids == ("5", "6") and cfg.years == (1985, 1986)
    assert cfg.bands[3] == "green" and cfg.filter_params.min_component_size == 20 and cfg.max_batch_size == 32


@pytest.mark.parametrize("args,message", [
    (("--threshold", "1.5"), "--threshold"),
    (("--min_batch_size", "8", "--max_batch_size", "4"), "--min_batch_size"),
    (("--spatial_window", "4"), "odd"),
    (("--years", "1985,1987"), "consecutive"),
    (("--export_nodata", "a,b"), "--export_nodata"),
])
def test_invalid_options_are_refused_before_running(args, message):
    with pytest.raises(UserError, match=message):
        config(*BASE, "--grids", "1", "--years", "2000", *args) if "--years" not in args else config(*BASE, "--grids", "1", *args)


def test_required_options():
    with pytest.raises(UserError, match="--exports is required; --output is required"):
        config("--model", "m")
    with pytest.raises(UserError, match="--model is required"):
        config("--exports", "e", "--output", "o", "--grids", "1", "--years", "2000")


def test_model_routing_file(tmp_path):
    routing = tmp_path / "routing.json"
    routing.write_text(json.dumps({"models": [{"name": "minas_gerais", "path": "gs://b/mg.keras", "grids": [1500, 1501]}]}))
    routes = load_routes("gs://b/national.keras", str(routing))
    cfg = config(*BASE, "--grids", "1500,1600", "--years", "2000", "--model_routing", str(routing))
    assert cfg.route_for("1500").name == "minas_gerais" and cfg.route_for("1600").name == "national"
    assert [r.name for r in routes] == ["national", "minas_gerais"]
    routing.write_text(json.dumps({"models": [{"path": "a", "grids": [1]}, {"path": "b", "grids": [1]}]}))
    with pytest.raises(UserError, match="grid 1 is routed to both"):
        load_routes("n", str(routing))
    routing.write_text("{not json")
    with pytest.raises(UserError, match="routing.json: cannot read"):
        load_routes("n", str(routing))
    with pytest.raises(UserError, match="models"):
        routing.write_text("[]")
        load_routes("n", str(routing))


def test_discover_grid_years(tmp_path):
    for grid, year in (("1010", 2001), ("1010", 2000), ("990", 2000)):
        folder = tmp_path / grid / str(year)
        folder.mkdir(parents=True)
        (folder / "x-mixer.json").write_text("{}")
    (tmp_path / "1011" / "2000").mkdir(parents=True)  # no mixer: not an export
    assert discover_grid_years(str(tmp_path)) == {"990": [2000], "1010": [2000, 2001]}
    with pytest.raises(UserError, match="no exports found"):
        config("--exports", str(tmp_path / "none"), "--output", "o", "--model", "m")


def test_option_names_are_stable():
    names = option_names()
    assert {"exports", "output", "grids", "years", "model", "model_routing", "band_preset", "threshold", "filter_mode",
            "spatial_filter", "min_batch_size", "max_batch_size"} <= set(names)


def test_run_help_lists_the_pipeline_options(capsys):
    from pipeline.cli import main

    assert main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    for name in option_names():
        assert f"--{name}" in text


@pytest.mark.parametrize("command,reproduces", [
    ("run", "--spatial_filter off reproduces it"),
    ("filter", "--min-component-size 1 (no component is smaller: the spatial filter off) reproduces it"),
    ("ee-poststeps", "leaving 'spatial' out of --steps (the run's --spatial_filter off) reproduces it"),
])
def test_help_says_the_committed_c9_spatial_filter_is_a_no_op(command, reproduces, capsys):
    from pipeline.cli import main

    try:
        code = main([command, "--help"])
    except SystemExit as stop:  # argparse's own --help exits
        code = stop.code
    assert code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "The committed C9 script (5-SpatialFilter.js) filters class 10" in text
    assert reproduces in text
