"""No tracebacks for people's mistakes (issue 16, deliverable 6): a read-only or full disk, an output path that is
a file, a truncated raster in `stats` or `accuracy`: one line naming the path and the cause, exit 2; `-v` adds
the trace; a bug keeps its traceback."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from apache_beam.io.localfilesystem import LocalFileSystem

from pipeline import failures
from tests.support.products import run_cli, write_raster


@pytest.fixture
def raster(tmp_path):
    """A 300 × 300 uncompressed classification map (mining in one corner) in its own folder."""
    values = np.zeros((300, 300), np.uint8)
    values[:40, :40] = 30
    return write_raster(tmp_path / "maps" / "map_2020.tif", values, nodata=255)


@pytest.fixture
def truncated(raster, tmp_path):
    """The same map cut to its first half: the header is intact, the pixels are not."""
    path = tmp_path / "cut" / "map_2020.tif"
    path.parent.mkdir()
    data = raster.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def one_error_line(err: str, command: str) -> str:
    """The error line of a failed command, checking that it is the only line that is not a log line."""
    lines = [line for line in err.strip().splitlines() if " INFO " not in line and " WARNING " not in line]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mining-mapper {command}: error: ")
    return lines[0][len(f"mining-mapper {command}: error: "):]


def test_stats_output_path_that_is_a_file_is_one_line_exit_2(raster, tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    code, _, err = run_cli("stats", raster, "--output", target, "--quiet")
    assert code == 2
    assert one_error_line(err, "stats") == f"{target}: exists and is a file, not a folder: choose another output folder or remove the file"


def test_stats_output_below_a_file_is_one_line_exit_2(raster, tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    code, _, err = run_cli("stats", raster, "--output", tmp_path / "taken" / "stats", "--quiet")
    assert code == 2
    assert one_error_line(err, "stats").startswith(f"{tmp_path / 'taken' / 'stats'}")
    assert "is a file, not a folder" in err


def test_stats_truncated_raster_names_the_file_exit_2(truncated, tmp_path):
    code, _, err = run_cli("stats", truncated, "--output", tmp_path / "out", "--quiet")
    assert code == 2
    assert one_error_line(err, "stats").startswith(f"{truncated}: cannot read its pixels, the file is truncated or corrupt")
    assert not (tmp_path / "out").exists()


def test_accuracy_design_truncated_raster_names_the_file_exit_2(truncated, tmp_path):
    code, _, err = run_cli("accuracy", "design", truncated, "--n", "20", "--output", tmp_path / "out")
    assert code == 2
    assert one_error_line(err, "accuracy").startswith(f"{truncated}: cannot read its pixels, the file is truncated or corrupt")


def test_truncated_raster_read_beside_an_intact_one_blames_the_truncated_one(raster, truncated, tmp_path):
    from pipeline.errors import UserError
    from pipeline.io import rasters as annual_rasters

    raster = raster.rename(tmp_path / "maps" / "cover_2020.tif")  # GDAL names the failing file by its base name
    with pytest.raises(UserError, match=f"^{truncated}: cannot read its pixels"), \
            annual_rasters.open_raster(str(truncated)) as broken, annual_rasters.open_raster(str(raster)) as intact:
        intact.read(1)
        broken.read(1)


def test_read_only_output_is_one_line_exit_2(raster, tmp_path, monkeypatch):
    def read_only(self, path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.setattr(LocalFileSystem, "create", read_only)
    code, _, err = run_cli("stats", raster, "--output", tmp_path / "out", "--quiet")
    assert code == 2
    message = one_error_line(err, "stats")
    assert message.startswith(str(tmp_path / "out")) and "read-only file system: choose a writable output location" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the permission case needs a normal user")
def test_unwritable_output_folder_is_one_line_exit_2(raster, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, _, err = run_cli("stats", raster, "--output", folder, "--quiet")
    finally:
        folder.chmod(0o755)
    assert code == 2 and "permission denied" in one_error_line(err, "stats")


def test_permission_denied_on_the_output_is_one_line_exit_2(raster, tmp_path, monkeypatch):
    """The permission case as the file system reports it (the chmod variant above cannot run as root, as on CI)."""
    def denied(self, path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(LocalFileSystem, "create", denied)
    code, _, err = run_cli("stats", raster, "--output", tmp_path / "out", "--quiet")
    assert code == 2 and "permission denied" in one_error_line(err, "stats")


def test_full_disk_names_the_output_file_and_leaves_nothing(raster, tmp_path, monkeypatch):
    class FullDisk:
        def __init__(self, path):
            self.path = path
            open(path, "wb").close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write(2) reports it: no file name

        def close(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(LocalFileSystem, "create", lambda self, path, *a, **k: FullDisk(path))
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_cli("stats", raster, "--output", out, "--quiet")
    assert code == 2
    message = one_error_line(err, "stats")
    assert message.startswith(str(out / "")) and message.endswith("no space left on the device: free some space or choose another output location")
    assert list(out.iterdir()) == []  # no partial file survives


def test_verbose_shows_the_trace_then_the_line(raster, tmp_path):
    (tmp_path / "taken").write_text("")
    code, _, err = run_cli("-v", "stats", raster, "--output", tmp_path / "taken", "--quiet")
    assert code == 2
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("mining-mapper stats: error: ")


def test_a_bug_keeps_its_traceback(raster, tmp_path, monkeypatch):
    from pipeline.products import stats

    monkeypatch.setattr(stats, "compute_statistics", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run_cli("stats", raster, "--output", tmp_path / "out", "--quiet")


def test_describe_is_none_for_errors_that_are_not_the_environments():
    assert failures.describe(ValueError("bad")) is None
    assert failures.describe(OSError(errno.EIO, "I/O error")) is None  # no path to name: a traceback is better
    assert failures.describe(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")).endswith(
        "cannot connect: check the network, proxy and firewall")


def test_cloud_storage_refusal_mid_run_is_one_line_naming_the_object():
    from apache_beam.io.filesystem import BeamIOError
    from google.api_core import exceptions as api

    refused = api.Forbidden("POST https://storage.googleapis.com/upload/storage/v1/b/mm-out/o?name=run/a.tif: "
                            "nobody@p.iam.gserviceaccount.com does not have storage.objects.create access")
    line = failures.describe(BeamIOError("Rename operation failed", {("gs://mm-out/.a.partial", "gs://mm-out/a.tif"): refused}))
    assert line.startswith("Google Cloud refused a request (403 POST https://storage.googleapis.com/upload/storage/v1/b/mm-out/o?name=run/a.tif")
    assert line.endswith("check the bucket, the path and the account's roles")


def test_first_line_quotes_one_line_of_the_cause_cut_with_an_ellipsis():
    assert failures.first_line(ValueError("  bad value\nTraceback ...\n")) == "bad value"
    assert failures.first_line(KeyError()) == "KeyError"  # no text: the type names it
    assert failures.first_line(ValueError("x" * 240)) == "x" * 240
    assert failures.first_line(ValueError("x" * 241)) == "x" * 237 + "…"
    assert failures.first_line(ValueError("y" * 500), 200) == "y" * 197 + "…"


def test_python_m_pipeline_run_says_a_read_only_output_in_one_line(tmp_path, monkeypatch, capsys):
    """`python -m pipeline.run` and the Flex Template (both `pipeline.run.main`) report as `mining-mapper run` does."""
    from pipeline import run as run_module
    from tests.support.synthetic_run import pipeline_args, stand_in_model, truth_stack, write_exports

    write_exports(tmp_path / "exports", truth_stack(1))
    model = stand_in_model(str(tmp_path / "model.keras"))

    def read_only(self, path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.setattr(LocalFileSystem, "create", read_only)
    monkeypatch.setattr(LocalFileSystem, "mkdirs", read_only)
    assert run_module.main(pipeline_args(tmp_path / "exports", tmp_path / "out", model, "--grids", "1010", "--years", "2000")) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (Beam logs the failed bundle with its trace before)
    assert last.startswith(f"mining-mapper run: error: {tmp_path / 'out'}")
    assert last.endswith("read-only file system: choose a writable output location")


def test_report_is_none_for_a_bug_and_prints_nothing(capsys):
    from pipeline.errors import UserError

    assert failures.report(ZeroDivisionError("division by zero"), "run") is None
    assert capsys.readouterr().err == ""
    assert failures.report(UserError("--model m: not found"), "run") == 2
    assert capsys.readouterr().err == "mining-mapper run: error: --model m: not found\n"
