"""ReadEarthEngineExports (transforms/read.py) with TestPipeline + assert_that on the DirectRunner (FnApiRunner).

Three pipelines: the real servir-aces export; the real phen_asynch shard beside small written exports with
bad inputs (corrupt gz shard, truncated shard, wrong record size, wrong band names, missing mixer, missing
year folder), with the Beam metrics checked; and a generated sample compared with its truth rasters.
"""
from __future__ import annotations

import os
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from pipeline.elements import ExportPatch
from pipeline.io.example import encode_example
from pipeline.io.export_reader import read_export
from tests.conftest import shared_path
from tests.support.exports import PHEN_BANDS, SERVIR_BANDS, record_bytes, record_values, write_export
from transforms.read import ReadEarthEngineExports


def make_pipeline() -> BeamTestPipeline:
    """A TestPipeline on the DirectRunner's in-memory FnApiRunner (never the Prism runner, which downloads)."""
    return BeamTestPipeline(runner="DirectRunner", options=PipelineOptions(["--direct_running_mode=in_memory"]))


def link(root: Path, grid: str, year: int, target: Path) -> None:
    """Lay a real export folder out as {root}/{grid}/{year} (a symlink)."""
    (root / grid).mkdir(parents=True, exist_ok=True)
    os.symlink(target, root / grid / str(year))


def patch_summary(item):
    """((grid, year, index), (row, col, kernel, side, bands, value of band 0 at the centre, observed pixels))."""
    key, patch = item
    side = patch.bands.shape[0]
    return key, (patch.row, patch.col, patch.kernel, side, patch.bands.shape[2],
                 float(patch.bands[side // 2, side // 2, 0]), int(patch.observed.sum()))


def check(predicate, description: str):
    """An assert_that matcher applying `predicate` to the whole list of elements."""
    def matcher(actual):
        if not predicate(list(actual)):
            raise BeamAssertException(f"{description}: got {sorted(map(str, actual))}")
    return matcher


def test_servir_export_through_the_transform(tmp_path):
    link(tmp_path, "servir", 2021, shared_path("ee_exports", "servir_aces"))
    p = make_pipeline()
    out = p | ReadEarthEngineExports(str(tmp_path), [("servir", 2021), ("servir", 2022)], SERVIR_BANDS)

    def georeferenced(items):
        (key, g), = items
        minx, miny, maxx, maxy = g.bounds
        return (key == ("servir", 2021) and g.crs == "EPSG:4326" and g.kernel == 0 and (g.width, g.height) == (256, 256)
                and abs(minx - 89.390) < 5e-4 and abs(maxx - 89.413) < 5e-4
                and abs(miny - 27.425) < 5e-4 and abs(maxy - 27.448) < 5e-4)

    patches = out["patches"] | "Summary" >> beam.Map(lambda kv: (kv[0], kv[1].bands.shape, int(kv[1].observed.sum())))
    assert_that(patches, equal_to([(("servir", 2021, 0), (256, 256, 8), 256 * 256)]), label="Patches")
    assert_that(out["geometry"], check(georeferenced, "servir georeference"), label="Geometry")
    assert_that((out["dead_letter"] | "Dead letter lines" >> beam.Map(lambda kv: kv[1].to_record())), equal_to([]), label="NoDeadLetters")
    assert_that(out["missing"] | beam.Map(lambda kv: (kv[0], "no such export folder" in kv[1].reason)),
                equal_to([(("servir", 2022), True)]), label="Missing")
    p.run().wait_until_finish()


def test_bad_inputs_and_metrics(tmp_path):
    root = tmp_path / "exports"
    link(root, "phen", 2019, shared_path("ee_exports", "phen_asynch_kernel60"))
    side = 12  # patch 8 + kernel 4
    g1 = [record_bytes(i, side, PHEN_BANDS) for i in range(5)]
    masked = record_values(0, side, len(PHEN_BANDS))
    masked[5, 5, 2] = -9999.0  # a no-data pixel inside the core of g1/2000 patch 0
    g1[0] = encode_example({band: masked[..., b] for b, band in enumerate(PHEN_BANDS)})
    write_export(root / "g1" / "2000", 5, records=g1)
    # g2/2000: 6 records in 3 shards, the middle one corrupt (its trailer intact)
    shards = write_export(root / "g2" / "2000", 6, records=[record_bytes(i, side, PHEN_BANDS) for i in range(6)])
    data = bytearray(shards[1].read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8
    shards[1].write_bytes(bytes(data))
    # g2/2001: the last shard truncated
    shards = write_export(root / "g2" / "2001", 4, records=[record_bytes(i, side, PHEN_BANDS) for i in range(4)])
    shards[-1].write_bytes(shards[-1].read_bytes()[:30])
    # g3/2000: a record of the wrong size and one with wrong band names
    records = [record_bytes(i, side, PHEN_BANDS) for i in range(4)]
    records[1] = record_bytes(1, side + 1, PHEN_BANDS)
    records[2] = record_bytes(2, side, ("constant", "sin_1", "cos_1", "sin_2", "COS_2"))
    write_export(root / "g3" / "2000", 4, records=records)
    # g4/2000: shards but no mixer
    write_export(root / "g4" / "2000", 2, records=[record_bytes(i, side, PHEN_BANDS) for i in range(2)])
    (root / "g4" / "2000" / "g_2000-mixer.json").unlink()
    grid_years = [("phen", 2019), ("g1", 2000), ("g1", 2001), ("g2", 2000), ("g2", 2001), ("g3", 2000), ("g4", 2000)]

    p = make_pipeline()
    out = p | "Read" >> ReadEarthEngineExports(str(root), grid_years, PHEN_BANDS)

    def expected_patch(grid, index, per_row=2):
        values = record_values(index, side, len(PHEN_BANDS))
        return (grid, 2000, index), (*divmod(index, per_row), 4, side, 5, float(values[6, 6, 0]), side * side - 1)

    g2_2001 = [((k[0], 2001, k[2]), v) for k, v in (expected_patch("g2", i) for i in (0, 1))]
    g1_0 = expected_patch("g1", 0)
    expected = ([(g1_0[0], (*g1_0[1][:-1], side * side - 2))] + [expected_patch("g1", i) for i in range(1, 5)] + [expected_patch("g2", i) for i in (0, 1, 4, 5)]
                + g2_2001 + [expected_patch("g3", i) for i in (0, 3)])
    patches = out["patches"] | "Summary" >> beam.Map(patch_summary)
    # g2/2000: records of the corrupt shard may be partly kept; those kept must be right, the rest present
    assert_that(
        patches | "NotCorruptShard" >> beam.Filter(lambda kv: not (kv[0][:2] == ("g2", 2000) and kv[0][2] in (2, 3))),
        equal_to(expected), label="Patches")
    assert_that(
        patches | "CorruptShard" >> beam.Filter(lambda kv: kv[0][:2] == ("g2", 2000) and kv[0][2] in (2, 3)),
        check(lambda items: all(v == expected_patch("g2", k[2])[1] for k, v in items), "records kept from the corrupt shard"),
        label="CorruptShardRecords")

    def dead_letters_ok(items):
        def has(grid, year, file_end, record, phrase):
            return any(d["grid"] == grid and d["year"] == year and d["file"].endswith(file_end)
                       and d["record"] == record and phrase in d["reason"] for d in items)
        return all([
            has("phen", 2019, "phen/2019", None, "shard(s) 00000-00004 missing"),
            has("phen", 2019, "-00005.tfrecord", None, "2 record(s) not read"),
            has("g2", 2000, "g_2000-00001.tfrecord.gz", None, "before the break kept"),
            has("g2", 2001, "g_2000-00001.tfrecord.gz", None, "truncated"),
            has("g3", 2000, "g_2000-00000.tfrecord.gz", 1, "expected 12x12"),
            has("g3", 2000, "g_2000-00001.tfrecord.gz", 2, "missing band(s) cos_2"),
            all(set(d) == {"grid", "year", "file", "record", "reason"} for d in items),
            not any(d["grid"] in ("g1", "g4") for d in items),
        ])

    assert_that((out["dead_letter"] | "Dead letter lines" >> beam.Map(lambda kv: kv[1].to_record())), check(dead_letters_ok, "dead letters"), label="DeadLetters")
    assert_that(out["missing"] | beam.Map(lambda kv: (kv[0], "no mixer" in kv[1].reason or "no such export folder" in kv[1].reason)),
                equal_to([(("g1", 2001), True), (("g4", 2000), True)]), label="Missing")
    assert_that(out["geometry"] | beam.Map(lambda kv: (kv[0], kv[1].kernel, kv[1].total_patches)),
                equal_to([(("phen", 2019), 60, 15), (("g1", 2000), 4, 5), (("g2", 2000), 4, 6),
                          (("g2", 2001), 4, 4), (("g3", 2000), 4, 4)]), label="Geometry")
    result = p.run()
    result.wait_until_finish()

    def counter(name):
        found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
        return sum(c.committed for c in found)

    n_patches = counter("patches_read")
    assert n_patches >= len(expected)  # plus the records kept from the corrupt shard
    assert counter("missing_exports") == 2 and counter("exports_read") == 5
    # pixel (0, 0), masked in every written record, lies in the buffer; only g1/2000 patch 0 has one in its core
    assert counter("not_observed_pixels") == 1


def test_generated_sample_matches_its_truth(tmp_path):
    from pipeline.demo.sample import SampleSpec, generate_sample

    spec = SampleSpec(grids=2, years=(2011, 2013), patch_size=32, kernel=16, training_grids=0)
    manifest = generate_sample(str(tmp_path), spec).manifest
    grid_years = [(g["grid"], y) for g in manifest["grids"] for y in manifest["years"]]
    p = make_pipeline()
    out = p | ReadEarthEngineExports(str(tmp_path / "exports"), grid_years, manifest["bands"], kernel=16)
    truth_root = str(tmp_path / "truth")

    def compare(item):
        (grid, year, index), patch = item
        truth = np.load(f"{truth_root}/{grid}/{year}_classes.npy")
        core_bands, core_observed = patch.core()
        window = truth[patch.row * 32 : patch.row * 32 + 32, patch.col * 32 : patch.col * 32 + 32]
        return (grid, year, index), bool(np.array_equal(core_observed, window != 255)
                                          and (core_bands[~core_observed] == 0).all()
                                          and core_bands.shape == (32, 32, 6))

    assert_that(out["patches"] | beam.Map(compare),
                equal_to([((g, y, i), True) for g, y in grid_years for i in range(4)]), label="Truth")
    transforms = {g["grid"]: tuple(g["transform"]) for g in manifest["grids"]}
    assert_that(out["geometry"] | beam.Map(lambda kv: (kv[0], kv[1].transform == transforms[kv[0][0]], kv[1].kernel)),
                equal_to([(gy, True, 16) for gy in grid_years]), label="Geometry")
    assert_that((out["dead_letter"] | "Dead letter lines" >> beam.Map(lambda kv: kv[1].to_record())), equal_to([]), label="NoDeadLetters")
    p.run().wait_until_finish()
    masked = manifest["fully_masked_patch"]
    truth = np.load(tmp_path / "truth" / masked["grid"] / f"{masked['year']}_classes.npy")
    row, col = divmod(masked["patch"], 2)
    assert (truth[row * 32 : row * 32 + 32, col * 32 : col * 32 + 32] == 255).all()


def test_transform_validates_its_arguments():
    with pytest.raises(ValueError, match="at least one band"):
        ReadEarthEngineExports("/x", [], [])
    with pytest.raises(ValueError, match="duplicate"):
        ReadEarthEngineExports("/x", [], ["a", "a"])
    with pytest.raises(ValueError, match="even"):
        ReadEarthEngineExports("/x", [], ["a"], kernel=3)


def test_gs_paths_through_the_storage_emulator(tmp_path):
    """The same sample written to and read from gs:// (gcp-storage-emulator) as from a local folder."""
    from pipeline.demo.sample import SampleSpec, generate_sample
    from tests.support.storage import storage_emulator

    spec = SampleSpec(grids=1, years=(2011, 2012), patch_size=32, kernel=16, training_grids=0)
    local = generate_sample(str(tmp_path / "local"), spec)
    bands = local.bands
    with storage_emulator(buckets=("mm-sample",)) as client:
        remote = generate_sample("gs://mm-sample/demo", spec)
        assert remote.manifest == local.manifest and remote.exports == "gs://mm-sample/demo/exports"
        bucket = client.bucket("mm-sample")
        # corrupt the second shard of 2012 (its gzip trailer intact): the record count is recovered
        # through FileSystems on gs:// (size from match, trailer by seek) and nothing else is lost
        blob = bucket.blob("demo/exports/1137/2012/1137_2012-00000.tfrecord.gz")
        data = bytearray(blob.download_as_bytes())
        data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8
        blob.upload_from_string(bytes(data))

        def read(root):
            out = {}
            for year in (2011, 2012):
                for e in read_export(f"{root}/exports/1137/{year}", "1137", year, bands):
                    if isinstance(e, ExportPatch):
                        out[e.key] = e
            return out

        remote_patches = read("gs://mm-sample/demo")
        p = make_pipeline()
        out = p | ReadEarthEngineExports("gs://mm-sample/demo/exports", [("1137", 2011), ("1137", 2012)], bands)
        assert_that(out["patches"] | beam.Map(lambda kv: kv[0][1:]),
                    check(lambda keys: {(2011, 0), (2011, 1), (2011, 2), (2011, 3), (2012, 2), (2012, 3)} <= set(keys),
                          "patches read from gs://"), label="Keys")
        assert_that((out["dead_letter"] | "Dead letter lines" >> beam.Map(lambda kv: kv[1].to_record())) | beam.Map(lambda d: (d["file"], d["record"] is None)),
                    check(lambda items: all(f.endswith("1137_2012-00000.tfrecord.gz") for f, _ in items) and items,
                          "dead letters only for the corrupt shard"), label="Dead")
        p.run().wait_until_finish()
    local_patches = read(str(tmp_path / "local"))
    assert {k for k in local_patches if k[1] == 2011} == {k for k in remote_patches if k[1] == 2011}
    assert {("1137", 2012, 2), ("1137", 2012, 3)} <= set(remote_patches)
    for key, patch in remote_patches.items():
        assert patch == local_patches[key]
