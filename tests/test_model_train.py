"""Training end to end on generated patches: loss goes down, resume, export, handler, evaluation, bad data.

One tiny run (4 filters, depth 2, 32x32 patches, 4 grids) is trained once per module and shared.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.data import PatchSpec, example_bytes, observed_mask, synthetic_patches, write_patches, write_records
from pipeline.contract import BAND_PRESETS
from pipeline.cli import main

# Keras's own .keras saving trips numpy 2's __array__(copy=) deprecation; not this project's code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

BANDS = BAND_PRESETS["appendix"]
P = 32
TINY = ["--patch-size", str(P), "--base-filters", "4", "--depth", "2", "--batch-size", "4",
        "--learning-rate", "0.01", "--val-fraction", "0.25", "--seed", "0"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A two-epoch run on 4 grids x 6 generated patches; returns (data folder, run folder)."""
    root = tmp_path_factory.mktemp("model_run")
    data = root / "data"
    for g in range(4):
        images, labels = synthetic_patches(6, P, BANDS, seed=g, masked_fraction=0.02)
        write_patches(str(data / f"{1000 + g}" / "patches-00000.tfrecord.gz"), images, labels, BANDS)
    run = root / "run"
    assert main(["train", str(data), "--output", str(run), "--epochs", "2", *TINY]) == 0
    return data, run


def _state(run: Path) -> dict:
    return json.loads((run / "train_state.json").read_text())


def test_two_epochs_lower_the_loss_and_export_a_documented_model(trained_run):
    _, run = trained_run
    state = _state(run)
    losses = [h["loss"] for h in state["history"]]
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    assert losses[1] < losses[0]
    card = json.loads((run / "model" / "model_card.json").read_text())
    assert card["bands"] == list(BANDS) and card["preset"] == "appendix"
    assert card["architecture"]["base_filters"] == 4 and card["architecture"]["parameters"] > 0
    assert card["training"]["learning_rate"] == 0.01 and card["training"]["batch_size"] == 4
    assert card["data"]["split"]["by"] == "grid" and len(card["data"]["split"]["validation_groups"]) == 1
    assert set(card["normalization"]["statistics"]) == set(BANDS)
    assert {"tensorflow", "keras", "tensorflow-transform", "apache-beam"} <= set(card["versions"])
    assert card["metrics"]["selected"]["threshold"] == card["threshold"]
    assert (run / "model" / "saved_model.pb").exists()
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch-*.keras")) == ["epoch-0001.keras", "epoch-0002.keras"]


def test_resume_continues_the_epoch_count(trained_run, tmp_path, caplog):
    data, run = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = _state(copy)["history"]
    caplog.set_level("INFO")
    assert main(["train", str(data), "--output", str(copy), "--epochs", "3", "--no-export", *TINY]) == 0
    state = _state(copy)
    assert state["epoch"] == 3 and [h["epoch"] for h in state["history"]] == [1, 2, 3]
    assert state["history"][:2] == before
    assert "resuming from epoch-0002.keras (epoch 2 of 3)" in caplog.text
    assert "epoch 3/3" in caplog.text and "epoch 1/3" not in caplog.text
    # two full checkpoints kept
    assert sorted(p.name for p in (copy / "checkpoints").glob("epoch-*.keras")) == ["epoch-0002.keras", "epoch-0003.keras"]


def test_resume_with_other_settings_is_refused(trained_run, tmp_path, capsys):
    data, run = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    args = ["train", str(data), "--output", str(copy), "--epochs", "3", *TINY, "--base-filters", "8"]
    assert main(args) == 2
    assert "different settings (base_filters)" in capsys.readouterr().err


def _in_memory_transform_then_model(run: Path, raw: np.ndarray) -> np.ndarray:
    """The training-time path: the run's tf.Transform graph, then the U-Net with the exported weights."""
    import tensorflow as tf

    from model.preprocessing import load_transform, transform_images
    from model.unet import build_unet

    state = _state(run)
    network = build_unet(len(BANDS), base_filters=4, depth=2, patch_size=None)
    network.load_weights(str(run / "checkpoints" / state["early"]["best_weights"]))
    layer = load_transform(str(run / "transform")).transform_features_layer()
    inputs = transform_images(layer, tf.constant(raw), BANDS)
    return np.asarray(network(inputs, training=False))


def test_serving_output_equals_transform_then_model(trained_run):
    from model.export import load_serving_model

    _, run = trained_run
    model = load_serving_model(str(run / "model"))
    raw, _ = synthetic_patches(3, 64, BANDS, seed=42, masked_fraction=0.01)  # another size than trained on
    raw[0, 0, 0, 2] = np.nan
    served = model(raw)
    assert served.shape == (3, 64, 64, 1) and np.isfinite(served).all()
    np.testing.assert_allclose(served, _in_memory_transform_then_model(run, raw), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="bands swir1, nir"):
        model(raw[..., :5])


def test_keras_serving_model_equals_transform_then_model(trained_run):
    """serving.keras (Normalization with the tf.Transform statistics + U-Net), loaded by the pipeline's
    loader under TensorFlow, gives the transform-then-network probabilities to 1e-5."""
    from model.export import KERAS_FILE, NORMALIZATION_LAYER
    from transforms.inference import load_model

    _, run = trained_run
    model = load_model(str(run / "model" / KERAS_FILE))
    raw, _ = synthetic_patches(3, 64, BANDS, seed=43, masked_fraction=0.01)
    served = np.asarray(model(raw, training=False))
    np.testing.assert_allclose(served, _in_memory_transform_then_model(run, raw), rtol=0, atol=1e-5)
    card = json.loads((run / "model" / "model_card.json").read_text())
    layer = model.get_layer(NORMALIZATION_LAYER)
    stats = card["normalization"]["statistics"]
    np.testing.assert_allclose(np.ravel(layer.mean), [stats[b]["mean"] for b in BANDS], rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.ravel(layer.variance)), [stats[b]["std"] for b in BANDS], rtol=1e-6)


def test_keras_serving_model_under_jax(trained_run, tmp_path):
    """The same file under KERAS_BACKEND=jax (a subprocess) gives the TensorFlow probabilities to 1e-5.

    The interpreter is this one, or MINING_MAPPER_JAX_PYTHON (one with jax and keras installed)."""
    python = os.environ.get("MINING_MAPPER_JAX_PYTHON", sys.executable)
    probe = subprocess.run([python, "-c", "import jax"], check=False, capture_output=True)
    if probe.returncode:
        pytest.skip(f"jax is not importable by {python} (set MINING_MAPPER_JAX_PYTHON to an interpreter with jax and keras)")
    from model.export import KERAS_FILE

    _, run = trained_run
    raw, _ = synthetic_patches(2, 32, BANDS, seed=44)
    np.save(tmp_path / "raw.npy", raw)
    code = (
        "import os, sys, numpy as np, keras\n"
        "assert keras.backend.backend() == 'jax'\n"
        f"m = keras.models.load_model({str(run / 'model' / KERAS_FILE)!r}, compile=False)\n"
        f"np.save({str(tmp_path / 'jax.npy')!r}, np.asarray(m(np.load({str(tmp_path / 'raw.npy')!r}), training=False)))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run([python, "-c", code], env=env, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "jax.npy"), _in_memory_transform_then_model(run, raw), rtol=0, atol=1e-5)


def test_keras_serving_model_large_tiles_equal_the_handler(trained_run):
    """The trained serving.keras (preprocessing inside) by large tiles gives the handler's record-wise classes."""
    from model import tiling
    from model.export import KERAS_FILE
    from tests.support.unet import generated_export
    from transforms.inference import PatchModelHandler, load_model

    _, run = trained_run
    model = load_model(str(run / "model" / KERAS_FILE))
    geometry, patches = generated_export(2, 3, 32, 48, len(BANDS), seed=8)  # buffer 24 = the depth-2 halo
    got = tiling.classify_large_tiles(lambda b: np.asarray(model(b, training=False)), model, geometry, patches, 0.5, tile=64)
    expected = {c.index: c for c in PatchModelHandler("unused", threshold=0.5, min_batch_size=1, max_batch_size=6).run_inference(patches, model)}
    assert len(got) == 6
    for c in got:
        np.testing.assert_array_equal(c.classes, expected[c.index].classes)
        np.testing.assert_array_equal(c.probability, expected[c.index].probability)


def test_exported_model_through_the_pipeline_handler_matches_in_memory(trained_run):
    """The pipeline's own inference transform (RunInference with PatchModelHandler) loads the export."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that

    from model.export import load_serving_model
    from pipeline.elements import ExportPatch
    from pipeline.config import ModelRoute
    from tests.support.config import run_config
    from pipeline.method.tiles import classify_patch
    from transforms.inference import ClassifyPatches

    _, run = trained_run
    model_dir = str(run / "model")
    raw, _ = synthetic_patches(5, P, BANDS, seed=7)
    expected = load_serving_model(model_dir)(raw)
    observed = np.ones((P, P), dtype=bool)
    keyed = [(patch.key, patch) for patch in (ExportPatch("1000", 2020, i, 0, i, 0, raw[i], observed) for i in range(len(raw)))]

    def matches(results):
        assert sorted(k for k, _ in results) == [k for k, _ in keyed]
        for (_, _, i), patch in results:
            classes, probability = classify_patch(expected[i], observed, 0, 0.5)
            # Batches of other sizes may differ in the last float bits: only a pixel within 1e-5 of the
            # threshold may fall on the other side.
            near = np.abs(expected[i][..., 0] - 0.5) < 1e-5
            np.testing.assert_array_equal(patch.classes[~near], classes[~near])
            assert np.abs(patch.probability.astype(int) - probability.astype(int)).max() <= 1

    route = (ModelRoute("national", model_dir, ()),)
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        out = p | beam.Create(keyed) | ClassifyPatches(config=run_config(routes=route, threshold=0.5, min_batch_size=1, max_batch_size=2))
        assert_that(out, matches)


def test_serving_model_loads_without_tensorflow_transform(trained_run):
    """Inference workers need TensorFlow only: loading does not import tensorflow_transform."""
    _, run = trained_run
    code = (
        "import sys, numpy as np\n"
        "from model.export import load_serving_model\n"
        f"m = load_serving_model({str(run / 'model')!r})\n"
        f"y = m(np.full((1, {P}, {P}, 6), 100, np.float32))\n"
        "assert y.shape == (1, %d, %d, 1)\n" % (P, P) +
        "assert 'tensorflow_transform' not in sys.modules, 'tft imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_evaluate_command_records_exact_metrics_in_the_card(trained_run, tmp_path, capsys):
    from model.data import make_dataset, scan_files
    from model.export import load_serving_model

    _, run = trained_run
    model_dir = tmp_path / "model"
    shutil.copytree(run / "model", model_dir)
    metrics_json = tmp_path / "metrics.json"
    assert main(["evaluate", str(model_dir), "--threshold", "0.4", "--sweep", "0.1:0.9:0.1",
                 "--output", str(metrics_json)]) == 0
    assert "threshold 0.40: IoU" in capsys.readouterr().out
    card = json.loads((model_dir / "model_card.json").read_text())
    report = card["metrics"]
    assert json.loads(metrics_json.read_text())["at_threshold"] == report["at_threshold"]
    assert card["threshold"] == report["selected_threshold"]
    assert [r["threshold"] for r in report["sweep"]] == pytest.approx([0.1 * i for i in range(1, 10)])

    # brute force over the validation split recorded at training time
    model = load_serving_model(str(model_dir))
    files = scan_files([(f, "") for f in card["data"]["split"]["validation_files"]], PatchSpec(BANDS, P))
    tp = fp = fn = tn = 0
    for x, y, w in make_dataset(files, PatchSpec(BANDS, P), batch_size=3).as_numpy_iterator():
        pred = model(x) >= 0.4
        ref = y > 0
        obs = observed_mask(x)[..., None]
        assert np.array_equal(obs, w > 0)
        tp += int((pred & ref & obs).sum())
        fp += int((pred & ~ref & obs).sum())
        fn += int((~pred & ref & obs).sum())
        tn += int((~pred & ~ref & obs).sum())
    assert report["at_threshold"]["confusion_matrix"]["matrix"] == [[tn, fp], [fn, tp]]
    assert report["at_threshold"]["iou"] == pytest.approx(tp / (tp + fp + fn))


def _bad_record(kind: str) -> bytes:
    features = {b: np.full(P * P, 50.0) for b in BANDS}
    features["label"] = np.zeros(P * P)
    if kind == "missing label":
        del features["label"]
    elif kind == "wrong bands":
        del features["ndsi"], features["mndwi"]
    elif kind == "wrong patch size":
        features = {k: v[: 16 * 16] for k, v in features.items()}
    return example_bytes(features)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing label", "no 'label' feature"),
        ("wrong bands", "missing band(s) mndwi, ndsi of the preset"),
        ("wrong patch size", "has 256 values, expected 1024 (32x32 patches); the file holds 16x16 patches"),
    ],
)
def test_bad_training_data_is_a_one_line_error_naming_the_file(tmp_path, capsys, kind, message):
    good, labels = synthetic_patches(2, P, BANDS, seed=0)
    write_patches(str(tmp_path / "data" / "1" / "good.tfrecord.gz"), good, labels, BANDS)
    bad = write_records(str(tmp_path / "data" / "2" / "bad.tfrecord.gz"), [_bad_record(kind)])
    code = main(["train", str(tmp_path / "data"), "--output", str(tmp_path / "run"), "--epochs", "1", *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("mining-mapper train: error: ") and len(err.splitlines()) == 1
    assert f"{bad}: record 0" in err and message in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_early_stopping_bookkeeping():
    from model.train import update_early_stopping

    early = {"best": None, "best_epoch": None, "wait": 0}
    steps = [update_early_stopping(early, e, v, min_delta=0.01, patience=2) for e, v in
             enumerate([1.0, 0.9, 0.895, 0.95, 0.8, 0.85, 0.81], start=1)]
    assert steps == [(True, False), (True, False), (False, False), (False, True),
                     (True, False), (False, False), (False, True)]
    assert early["best"] == 0.8 and early["best_epoch"] == 5


def test_loss_counts_observed_pixels_only():
    from model.train import make_loss

    y = np.array([1, 0, 1, 0], np.float32).reshape(1, 2, 2, 1)
    p = np.array([0.9, 0.2, 0.3, 0.99], np.float32).reshape(1, 2, 2, 1)
    w = np.array([1, 1, 1, 0], np.float32).reshape(1, 2, 2, 1)
    bce = -np.mean([np.log(0.9), np.log(0.8), np.log(0.3)])
    assert float(make_loss("bce")(y, p, w)) == pytest.approx(bce, rel=1e-5)
    dice = 1 - (2 * (0.9 + 0.3) + 1) / ((0.9 + 0.2 + 0.3) + 2 + 1)
    assert float(make_loss("dice")(y, p, w)) == pytest.approx(dice, rel=1e-5)
    assert float(make_loss("bce+dice")(y, p, w)) == pytest.approx(bce + dice, rel=1e-5)


def test_block_split_c9_code_run_validates_on_its_blocks(tmp_path):
    """--split block with the c9-code preset and normalisation, dice loss: the card's validation is the
    blocks' records, and evaluation without DATA uses exactly those."""
    bands = BAND_PRESETS["c9-code"]
    rng = np.random.default_rng(3)
    for f in range(2):
        images, labels = synthetic_patches(6, P, bands, seed=10 + f)
        lonlat = {"lon": rng.uniform(-60, -50, 6).astype(np.float32), "lat": rng.uniform(-10, 0, 6).astype(np.float32)}
        write_patches(str(tmp_path / "data" / f"f{f}.tfrecord.gz"), images, labels, bands, extra=lonlat)
    run = tmp_path / "run"
    args = ["train", str(tmp_path / "data"), "--output", str(run), "--epochs", "1", *TINY, "--band-preset", "c9-code",
            "--normalization", "c9-code", "--split", "block", "--block-size", "3", "--val-fraction", "0.3",
            "--loss", "bce+dice"]
    assert main(args) == 0
    card = json.loads((run / "model" / "model_card.json").read_text())
    split = card["data"]["split"]
    assert split["by"] == "block" and split["validation_blocks"]
    assert split["train_records"] + split["validation_records"] == 12
    assert card["metrics"]["patches"] == split["validation_records"]
    assert card["metrics"]["data"]["validation_split_of"] == "block"
    assert card["normalization"]["statistics"]["green"] == {"mean": 0.0, "std": 1.0}  # raw bytes, no division
    assert card["bands"] == list(bands) and card["training"]["loss"] == "bce+dice"
    # the c9-code normalisation (x / 255) in the portable .keras model: same probabilities as the SavedModel
    from model.export import KERAS_FILE, load_serving_model
    from transforms.inference import load_model

    raw, _ = synthetic_patches(2, P, bands, seed=5)
    portable = np.asarray(load_model(str(run / "model" / KERAS_FILE))(raw, training=False))
    np.testing.assert_allclose(portable, load_serving_model(str(run / "model"))(raw), rtol=0, atol=1e-5)


def test_export_refuses_to_overwrite_a_folder_that_is_not_a_model(trained_run, tmp_path):
    from model.export import export_serving_model, load_serving_model, serving_network
    from model.unet import build_unet
    from pipeline.errors import UserError

    _, run = trained_run
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    network = serving_network(build_unet(6, base_filters=4, depth=2, patch_size=P), 6, 4, 2, 0.3)
    card = {"bands": list(BANDS), "architecture": {"depth": 2}, "data": {"patch_size": P}}
    with pytest.raises(UserError, match="precious: exists and is not an exported model"):
        export_serving_model(network, str(run / "transform"), BANDS, str(target), card)
    assert (target / "notes.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="no saved_model.pb"):
        load_serving_model(str(target))
