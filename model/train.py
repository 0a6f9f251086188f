"""Training the U-Net from Earth Engine training patches: resumable, seeded, spatially validated.

`train(TrainConfig)` does, in order: find and check every record (clear errors naming the file),
split train/validation spatially (by grid folder or by block of patch coordinates), analyse the
tf.Transform statistics over the training pixels (Beam), train with Keras (BCE, optional dice, Adam
5e-6, batch 10 by default) on a parallel tf.data input with flips and 90-degree rotations, write a
checkpoint every N epochs, export the serving model (transform inside) with its model card, and
evaluate it on the validation split.

Output folder:
    transform/                 the tf.Transform output (transform_fn/, transformed_metadata/)
    checkpoints/epoch-NNNN.keras   full model + optimizer state, the last `keep_checkpoints` kept
    checkpoints/best-epoch-NNNN.weights.h5   weights with the lowest validation loss so far
    train_state.json           configuration, split, epochs done, history, early-stopping state
                               (file names relative to checkpoints/, so a run folder can be moved)
    model/                     the exported serving model and model_card.json

Running the same command again resumes from the last checkpoint (a larger --epochs continues);
--restart starts over.
"""
from __future__ import annotations

import json
import logging
import math
import posixpath
import re
import time
from dataclasses import asdict, dataclass, field

import keras
from keras import ops

from pipeline.contract import (
    DEFAULT_NORMALIZATION,
    DEFAULT_PATCH_SIZE,
    DEFAULT_PRESET,
    check_normalization,
    preset_bands,
)
from pipeline.errors import UserError

log = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
CHECKPOINT_RE = re.compile(r"^epoch-(\d{4,})\.keras$")
BEST_RE = re.compile(r"^best-epoch-(\d{4,})\.weights\.h5$")
LOSSES = ("bce", "dice", "bce+dice")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SPLITS = ("grid", "block", "none")

# Settings that define the model and the data; a checkpoint can only resume under the same values.
RESUME_KEYS = (
    "data", "validation", "preset", "normalization", "patch_size", "base_filters", "depth", "dropout",
    "batch_size", "learning_rate", "optimizer", "loss", "seed", "split", "val_fraction",
    "validation_groups", "block_size", "augment", "mixed_precision",
)


@dataclass
class TrainConfig:
    """Every option of `mining-mapper train` (defaults as published: Adam, 5e-6, batch 10)."""

    data: list[str]
    output: str
    preset: str = DEFAULT_PRESET
    normalization: str = DEFAULT_NORMALIZATION
    patch_size: int = DEFAULT_PATCH_SIZE
    base_filters: int = 64
    depth: int = 4
    dropout: float = 0.3
    epochs: int = 10
    batch_size: int = 10
    learning_rate: float = 5e-6
    optimizer: str = "adam"
    loss: str = "bce"
    seed: int = 0
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    early_stopping: int = 0
    min_delta: float = 0.0
    split: str = "grid"
    val_fraction: float = 0.2
    validation_groups: list[str] | None = None
    block_size: float = 0.25
    validation: list[str] | None = None
    shuffle_buffer: int = 64
    augment: bool = True
    mixed_precision: bool = False
    threshold: float = 0.5
    restart: bool = False
    export: bool = True
    evaluate: bool = True
    pipeline_args: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Validate option values (UserError naming the option)."""
        preset_bands(self.preset)
        check_normalization(self.normalization)
        positive = {
            "--epochs": self.epochs, "--batch-size": self.batch_size, "--patch-size": self.patch_size,
            "--base-filters": self.base_filters, "--depth": self.depth,
            "--checkpoint-every": self.checkpoint_every, "--keep-checkpoints": self.keep_checkpoints,
        }
        for name, value in positive.items():
            if value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
        if self.patch_size % 2**self.depth:
            raise UserError(f"--patch-size {self.patch_size} must be divisible by 2**depth = {2**self.depth}")
        if not self.learning_rate > 0:
            raise UserError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.loss not in LOSSES:
            raise UserError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.split not in SPLITS:
            raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.threshold < 1:
            raise UserError(f"--threshold must be in (0, 1), got {self.threshold}")
        if self.early_stopping < 0:
            raise UserError(f"--early-stopping must be 0 (off) or a patience in epochs, got {self.early_stopping}")

    def resume_signature(self) -> dict:
        """The settings a checkpoint must agree with to be resumed."""
        values = asdict(self)
        for key in ("data", "validation"):
            if values[key]:
                values[key] = [p.rstrip("/") for p in values[key]]
        return {k: values[k] for k in RESUME_KEYS}


@dataclass
class TrainResult:
    """What a training run produced."""

    output: str
    epochs_done: int
    history: list[dict]
    model_dir: str | None
    stopped_early: bool
    resumed_from: int
    card: dict | None


# ----------------------------------------------------------------------------------------------------
# Loss


def make_loss(kind: str) -> SegmentationLoss:
    """The training loss: 'bce', 'dice' or 'bce+dice', weighted by observed pixels."""
    weights = {"bce": (1.0, 0.0), "dice": (0.0, 1.0), "bce+dice": (1.0, 1.0)}[kind]
    return SegmentationLoss(bce_weight=weights[0], dice_weight=weights[1])


@keras.saving.register_keras_serializable(package="mining_mapper")
class SegmentationLoss(keras.losses.Loss):
    """Binary cross-entropy and/or soft dice, both weighted by the sample weight (observed pixels).

    BCE is the weighted mean over pixels; dice is 1 - (2 sum w p y + 1) / (sum w p + sum w y + 1)
    over the batch. Pixels of weight 0 (not observed) count in neither.
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 0.0, name: str = "segmentation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The loss of a batch; `sample_weight` (same pixels as y_true) weights every pixel."""
        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.cast(ops.reshape(y_true, ops.shape(y_pred)), "float32")
        if sample_weight is None:
            weight = ops.ones_like(y_pred)
        else:
            weight = ops.cast(ops.reshape(sample_weight, ops.shape(y_pred)), "float32")
        return self.weighted(y_true, y_pred, weight)

    def weighted(self, y_true, y_pred, weight):
        """The loss value for explicit per-pixel weights."""
        total = ops.sum(weight)
        loss = ops.convert_to_tensor(0.0, "float32")
        if self.bce_weight:
            eps = 1e-7
            p = ops.clip(y_pred, eps, 1.0 - eps)
            bce = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
            loss = loss + self.bce_weight * ops.sum(weight * bce) / ops.maximum(total, 1.0)
        if self.dice_weight:
            inter = ops.sum(weight * y_pred * y_true)
            denom = ops.sum(weight * y_pred) + ops.sum(weight * y_true)
            loss = loss + self.dice_weight * (1.0 - (2.0 * inter + 1.0) / (denom + 1.0))
        return loss

    def call(self, y_true, y_pred):
        """Unweighted loss (Keras API)."""
        return self.weighted(y_true, y_pred, ops.ones_like(y_pred))

    def get_config(self):
        """Serialisable configuration (checkpoints store the loss)."""
        return {"name": self.name, "bce_weight": self.bce_weight, "dice_weight": self.dice_weight}


def compile_network(network, config: TrainConfig) -> None:
    """Compile with the configured optimizer, learning rate, loss and an IoU metric at 0.5."""
    optimizer = keras.optimizers.get({"class_name": config.optimizer, "config": {"learning_rate": config.learning_rate}})
    network.compile(
        optimizer=optimizer,
        loss=make_loss(config.loss),
        weighted_metrics=[keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5, name="iou", dtype="float32")],
    )


# ----------------------------------------------------------------------------------------------------
# State and checkpoints


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def read_state(output: str) -> dict | None:
    """The saved training state of an output folder, or None."""
    path = posixpath.join(output, STATE_FILE)
    if not _gfile().exists(path):
        return None
    with _gfile().GFile(path, "r") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: broken training state ({error}); use --restart") from None


def write_state(output: str, state: dict) -> None:
    """Write the training state atomically (temp file then rename)."""
    path = posixpath.join(output, STATE_FILE)
    temp = path + ".tmp"
    with _gfile().GFile(temp, "w") as handle:
        handle.write(json.dumps(state, indent=2) + "\n")
    _gfile().rename(temp, path, overwrite=True)


def _epoch_files(folder: str, pattern: re.Pattern) -> dict[int, str]:
    """Files of a checkpoint folder matching a pattern, by epoch."""
    gfile = _gfile()
    if not gfile.exists(folder):
        return {}
    out = {}
    for name in gfile.listdir(folder):
        match = pattern.match(name.rstrip("/"))
        if match:
            out[int(match.group(1))] = posixpath.join(folder, name.rstrip("/"))
    return out


def prune_checkpoints(folder: str, keep: int, keep_best: str | None, after_epoch: int | None = None) -> None:
    """Keep the newest `keep` full checkpoints and the best-weights file named `keep_best`.

    With `after_epoch`, also drop files newer than that epoch (left by a run that stopped before
    its next state write, so not part of the resumed history).
    """
    gfile = _gfile()
    ckpts = _epoch_files(folder, CHECKPOINT_RE)
    epochs = sorted(ckpts)
    if after_epoch is not None:
        for e in epochs:
            if e > after_epoch:
                gfile.remove(ckpts[e])
        epochs = [e for e in epochs if e <= after_epoch]
    for e in epochs[:-keep]:
        gfile.remove(ckpts[e])
    for path in _epoch_files(folder, BEST_RE).values():
        if posixpath.basename(path) != keep_best:
            gfile.remove(path)


def update_early_stopping(early: dict, epoch: int, val_loss: float, min_delta: float, patience: int) -> tuple[bool, bool]:
    """Track the best validation loss; returns (improved, stop).

    `early` holds best, best_epoch, wait (epochs since the best) and is updated in place; an epoch
    improves when val_loss < best - min_delta; with patience > 0, stop once wait reaches patience.
    """
    improved = early.get("best") is None or val_loss < early["best"] - min_delta
    if improved:
        early.update(best=float(val_loss), best_epoch=int(epoch), wait=0)
    else:
        early["wait"] = int(early.get("wait", 0)) + 1
    return improved, bool(patience) and early["wait"] >= patience


# ----------------------------------------------------------------------------------------------------
# Data preparation


def prepare_data(config: TrainConfig):
    """Find, check and split the training data; returns (PatchSpec, Split)."""
    from model.data import (
        PatchSpec,
        list_record_files,
        no_split,
        scan_files,
        split_by_block,
        split_by_group,
    )

    spec = PatchSpec(preset_bands(config.preset), config.patch_size)
    by_block = config.split == "block" and not config.validation
    infos = scan_files(list_record_files(config.data), spec, with_coordinates=by_block)
    if config.validation:
        val_infos = scan_files(list_record_files(config.validation), spec)
        overlap = {f.path for f in infos} & {f.path for f in val_infos}
        if overlap:
            raise UserError(f"{sorted(overlap)[0]}: given both as training and as validation data")
        split = no_split(infos, val_infos)
    elif config.split == "none" or config.val_fraction == 0:
        if config.validation_groups:
            raise UserError("--validation-groups needs --split grid")
        split = no_split(infos)
    elif config.split == "grid":
        split = split_by_group(infos, config.val_fraction, config.seed, config.validation_groups)
    else:
        split = split_by_block(infos, config.block_size, config.val_fraction, config.seed)
    log.info(
        "data: %d file(s); split by %s: %d training and %d validation patches%s",
        len(infos), split.by, split.train_records, split.validation_records,
        f" (validation groups: {', '.join(split.validation_groups)})" if split.validation_groups else "",
    )
    if split.train_records == 0:
        raise UserError("no training patches left after the split")
    if config.early_stopping and split.validation_records == 0:
        raise UserError("--early-stopping needs validation data (a split with --val-fraction > 0, or --validation)")
    return spec, split


def _split_fingerprint(split) -> dict:
    """What must not change between a checkpoint and its resumption."""
    summary = split.to_json()
    return {k: summary[k] for k in ("by", "validation_groups", "validation_blocks", "train_files", "validation_files")}


# ----------------------------------------------------------------------------------------------------
# Training


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) a training run as configured; see the module docstring for the outputs."""
    config.check()
    from model.data import make_dataset, split_datasets_kwargs
    from model.preprocessing import analyze, band_statistics, load_transform, transform_images
    from model.unet import build_unet

    gfile = _gfile()
    output = config.output.rstrip("/")
    gfile.makedirs(output)
    ckpt_dir = posixpath.join(output, "checkpoints")
    transform_dir = posixpath.join(output, "transform")
    spec, split = prepare_data(config)

    state = None if config.restart else read_state(output)
    if state is not None:
        if state["config"] != config.resume_signature():
            changed = sorted(k for k in RESUME_KEYS if state["config"].get(k) != config.resume_signature()[k])
            raise UserError(
                f"{output}: holds a run with different settings ({', '.join(changed)}); "
                "use the same options to resume, --restart to start over, or another --output"
            )
        if state["split"] != _split_fingerprint(split):
            raise UserError(f"{output}: the training data or its split changed since the checkpoint; use --restart")
    else:
        for folder in (ckpt_dir, transform_dir):
            if gfile.exists(folder):
                gfile.rmtree(folder)
        state_path = posixpath.join(output, STATE_FILE)
        if gfile.exists(state_path):
            gfile.remove(state_path)

    bands = list(spec.bands)
    if state is None or not gfile.exists(posixpath.join(transform_dir, "transform_fn")):
        analyze(
            split.train_files, spec, config.normalization, transform_dir,
            pipeline_args=config.pipeline_args, **_analysis_filter(split),
        )
    tft_output = load_transform(transform_dir)
    statistics = band_statistics(tft_output, bands)
    transform_layer = tft_output.transform_features_layer()

    def transform(images):
        return transform_images(transform_layer, images, bands)

    previous_policy = keras.config.dtype_policy()
    if config.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        start_epoch = 0
        history: list[dict] = []
        early = {"best": None, "best_epoch": None, "best_weights": None, "wait": 0}
        if state is not None and state.get("checkpoint"):
            start_epoch = int(state["epoch"])
            history = list(state["history"])
            early = dict(state["early"])
            prune_checkpoints(ckpt_dir, config.keep_checkpoints, early.get("best_weights"), after_epoch=start_epoch)
            network = keras.models.load_model(posixpath.join(ckpt_dir, state["checkpoint"]))
            log.info("resuming from %s (epoch %d of %d)", state["checkpoint"], start_epoch, config.epochs)
            keras.utils.set_random_seed(config.seed + start_epoch)
        else:
            keras.utils.set_random_seed(config.seed)
            network = build_unet(
                len(bands), base_filters=config.base_filters, depth=config.depth,
                dropout=config.dropout, patch_size=config.patch_size,
            )
            compile_network(network, config)
        resumed_from = start_epoch
        stopped_early = bool(state and state.get("stopped_early"))
        if stopped_early:
            log.info("the run stopped early at epoch %d; --restart trains again", start_epoch)
        elif start_epoch >= config.epochs:
            log.info("nothing to train: %d epoch(s) done, --epochs %d", start_epoch, config.epochs)

        val_ds = None
        if split.validation_records:
            val_ds = make_dataset(
                batch_size=config.batch_size, spec=spec, transform=transform, **split_datasets_kwargs(split, "validation")
            )
        steps = math.ceil(split.train_records / config.batch_size)
        for epoch in range(start_epoch, config.epochs):
            if stopped_early:
                break
            train_ds = make_dataset(
                spec=spec, batch_size=config.batch_size, training=True, seed=config.seed, epoch=epoch,
                shuffle_buffer=config.shuffle_buffer, augment=config.augment, transform=transform,
                **split_datasets_kwargs(split, "train"),
            )
            began = time.perf_counter()
            fit = network.fit(train_ds, validation_data=val_ds, initial_epoch=epoch, epochs=epoch + 1, verbose=0, shuffle=False)
            seconds = time.perf_counter() - began
            logs = {k: float(v[-1]) for k, v in fit.history.items()}
            record = {"epoch": epoch + 1, **logs, "seconds": round(seconds, 3), "steps_per_second": round(steps / seconds, 4)}
            history.append(record)
            log.info(
                "epoch %d/%d: %s (%.1f s, %.3f steps/s)",
                epoch + 1, config.epochs,
                ", ".join(f"{k} {v:.4f}" for k, v in logs.items()), seconds, steps / seconds,
            )
            if "val_loss" in logs:
                improved, stop = update_early_stopping(
                    early, epoch + 1, logs["val_loss"], config.min_delta, config.early_stopping
                )
                if improved:
                    gfile.makedirs(ckpt_dir)
                    early["best_weights"] = f"best-epoch-{epoch + 1:04d}.weights.h5"
                    network.save_weights(posixpath.join(ckpt_dir, early["best_weights"]))
                if stop:
                    stopped_early = True
                    log.info(
                        "early stopping after epoch %d: val_loss has not improved for %d epoch(s) (best %.4f at epoch %d)",
                        epoch + 1, early["wait"], early["best"], early["best_epoch"],
                    )
            last = epoch + 1 == config.epochs
            if (epoch + 1) % config.checkpoint_every == 0 or last or stopped_early:
                _checkpoint(network, config, output, ckpt_dir, epoch + 1, history, early, split, stopped_early)
        epochs_done = history[-1]["epoch"] if history else start_epoch

        card = None
        model_dir = None
        if config.export:
            model_dir = posixpath.join(output, "model")
            best_path = posixpath.join(ckpt_dir, early["best_weights"]) if early.get("best_weights") else None
            use_best = bool(best_path and gfile.exists(best_path))
            if use_best:
                network.load_weights(best_path)
            serving = _serving_copy(network, config, len(bands))
            card = model_card(config, spec, split, statistics, serving, history, early, stopped_early, use_best)
            from model.export import export_serving_model

            export_serving_model(serving, transform_dir, bands, model_dir, card)
            if config.evaluate and split.validation_records:
                from model.evaluate import evaluate_model

                evaluate_model(model_dir, threshold=config.threshold, batch_size=config.batch_size)
                from model.export import read_model_card

                card = read_model_card(model_dir)
        return TrainResult(output, epochs_done, history, model_dir, stopped_early, resumed_from, card)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _analysis_filter(split) -> dict:
    """Block-filter arguments for the transform analysis (train records of a block split)."""
    if split.by != "block":
        return {}
    return {"block_size": split.block_size, "validation_blocks": split.validation_blocks, "keep": "train"}


def _checkpoint(network, config, output, ckpt_dir, epoch, history, early, split, stopped_early) -> None:
    """Save the full model (with optimizer state) and the state that resumes from it; prune old files."""
    gfile = _gfile()
    gfile.makedirs(ckpt_dir)
    name = f"epoch-{epoch:04d}.keras"
    path = posixpath.join(ckpt_dir, name)
    network.save(path)
    write_state(
        output,
        {
            "config": config.resume_signature(),
            "split": _split_fingerprint(split),
            "epoch": epoch,
            "checkpoint": name,
            "history": history,
            "early": early,
            "stopped_early": stopped_early,
        },
    )
    prune_checkpoints(ckpt_dir, config.keep_checkpoints, early.get("best_weights"))
    log.info("checkpoint: %s", path)


def _serving_copy(network, config: TrainConfig, num_bands: int):
    """The trained weights in an any-size float32 network for export."""
    from model.export import serving_network

    return serving_network(network, num_bands, config.base_filters, config.depth, config.dropout)


def model_card(config, spec, split, statistics, network, history, early, stopped_early, used_best) -> dict:
    """The model card written beside the exported model (metrics are added by evaluation)."""
    from model.export import versions
    from pipeline.contract import EXPORT_MAX, INDEX_OFFSET, INDEX_SCALE, REFLECTANCE_SCALE
    from model.unet import count_parameters

    total, trainable = count_parameters(network)
    return {
        "name": f"mining-unet-{config.preset}-f{config.base_filters}-d{config.depth}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "task": "binary segmentation: probability of mining per pixel (MapBiomas Collection 9 method)",
        "preset": config.preset,
        "bands": list(spec.bands),
        "input": {
            "dtype": "float32",
            "shape": "(batch, H, W, bands), H and W multiples of %d" % 2**config.depth,
            "band_count": len(spec.bands),
            "size_multiple": 2**config.depth,
            "values": "raw Earth Engine export values: reflectance x %g, index (x + %g) x %g, 0-%g"
            % (REFLECTANCE_SCALE, INDEX_OFFSET, INDEX_SCALE, EXPORT_MAX),
            "signature": "serving_default: bands -> probability",
        },
        "output": {"dtype": "float32", "shape": "(batch, H, W, 1)", "values": "probability of mining, 0-1"},
        "normalization": {
            "kind": config.normalization,
            "inside_model": True,
            "statistics": statistics,
            "over": "observed pixels of the training split",
        },
        "architecture": {
            "kind": "U-Net (Ronneberger et al. 2015), MapBiomas C9 layout",
            "base_filters": config.base_filters,
            "depth": config.depth,
            "dropout": config.dropout,
            "parameters": total,
            "trainable_parameters": trainable,
        },
        "training": {
            "epochs": config.epochs,
            "epochs_run": history[-1]["epoch"] if history else 0,
            "stopped_early": stopped_early,
            "weights": f"best validation loss (epoch {early.get('best_epoch')})" if used_best else "last epoch",
            "batch_size": config.batch_size,
            "optimizer": config.optimizer,
            "learning_rate": config.learning_rate,
            "loss": config.loss,
            "loss_weighting": "observed pixels only",
            "augmentation": ["flip left-right", "flip up-down", "rotate 90 x k"] if config.augment else [],
            "seed": config.seed,
            "mixed_precision": config.mixed_precision,
            "early_stopping_patience": config.early_stopping or None,
            "history": history,
        },
        "data": {
            "sources": list(config.data),
            "validation_sources": list(config.validation or []),
            "format": "Earth Engine TFRecord training patches (tf.train.Example, float lists per band + label)",
            "patch_size": spec.patch_size,
            "split": split.to_json(),
        },
        "threshold": config.threshold,
        "threshold_source": "training option (not yet evaluated)",
        "threshold_rule": "mining where probability >= threshold",
        "metrics": None,
        "versions": versions(),
    }
