"""Batched U-Net inference with Beam's RunInference: records or whole grid-years in, classified patches out.

Two Beam `ModelHandler`s (the contract of apache_beam.ml.inference): RunInference loads the model once per
worker process and shares it between threads, batches elements, and calls `run_inference` per batch.
- `PatchModelHandler` (record-wise, the default): the model sees each kernel-buffered record, batched
  between the min and max batch sizes; the buffer is cropped afterwards.
- `GridYearModelHandler` (`--inference_tile`): one grid-year's records are assembled into its mosaic and
  the model runs on large tiles carrying the network's derived halo (`model.tiling`); the classes and
  probabilities equal record-wise ones bit for bit in float32. An export whose buffer is smaller than the
  halo is inferred record-wise, and the log says why.
Precision: float32 runs the serving model as exported; bfloat16/float16 run the Keras serving model
(`serving.keras`) under the mixed policy, XLA-compiled (`model.inference.make_inference_fn`). The same code
runs on CPU and GPU. Each grid is routed to its model (national, or a state model).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam import typehints
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference
from apache_beam.metrics import Metrics

from model.gpu import check_gpu
from pipeline.config import RunConfig
from pipeline.elements import ClassifiedPatch, ExportPatch, GridYearRecords, PatchKey
from pipeline.errors import UserError
from pipeline.method.tiles import classify_patch, not_observed_patch
from transforms.metrics import NAMESPACE, RUN_INFERENCE_NAMESPACE


log = logging.getLogger(__name__)


def _load_keras_file(path: str):
    """A Keras file loaded without compiling; a gs:// one is copied to a temporary folder first (Keras opens
    local files only), and the copy is removed once the model is in memory."""
    import keras

    from pipeline.io.filesystem import basename, is_remote, read_bytes

    if not is_remote(path):
        return keras.models.load_model(path, compile=False)
    with tempfile.TemporaryDirectory(prefix="mining-mapper-model-") as folder:
        local = os.path.join(folder, basename(path))
        with open(local, "wb") as target:
            target.write(read_bytes(path))
        return keras.models.load_model(local, compile=False)


def load_model(path: str):
    """Load a serving model: a Keras file (`.keras`/`.h5`) directly, else through `model.export`."""
    if path.endswith((".keras", ".h5")):
        return _load_keras_file(path)
    from model.export import load_serving_model

    return load_serving_model(path)


def load_keras_network(path: str):
    """The Keras serving model of `path`: the file itself, or the `serving.keras` beside a SavedModel.

    Large tiles need its architecture (the derived halo) and 16-bit precisions its layers; a model
    exported before `serving.keras` existed is refused with a clear line.
    """
    if path.endswith((".keras", ".h5")):
        return _load_keras_file(path)
    from model.export import KERAS_FILE

    from pipeline.io.filesystem import exists, join

    keras_path = join(path, KERAS_FILE)
    if not exists(keras_path):
        raise UserError(f"{path}: no {KERAS_FILE} beside the SavedModel; --inference_tile and 16-bit --inference_precision "
                        "need it (export the model again with `mining-mapper train`)")
    return _load_keras_file(keras_path)


@dataclasses.dataclass
class InferenceModel:
    """What the handlers run: a predict callable (batch (B, H, W, bands) → probabilities) and, when
    loaded, the Keras network whose architecture sets the large-tile halo."""

    predict: Callable[[np.ndarray], np.ndarray]
    network: Any = None
    reference: InferenceModel | None = None
    """With --precision_check: the same network in float32, uncompiled, to count what 16 bits change."""

    def __call__(self, inputs, training: bool = False) -> np.ndarray:
        return np.asarray(self.predict(inputs))


def load_inference_model(path: str, precision: str = "float32", *, need_network: bool = False, check: bool = False) -> InferenceModel:
    """The model a handler runs at `precision`: float32 calls the serving model as exported (exact, as
    record-wise inference always did); bfloat16/float16 compile the Keras serving model in mixed precision.
    `check` (16-bit only) adds that Keras network's own float32 call as the reference whose classes are
    compared (the network already loaded: the model is not read twice)."""
    from model.inference import make_inference_fn

    if precision == "float32":
        served = load_model(path)
        network = served if hasattr(served, "layers") else (load_keras_network(path) if need_network else None)
        return _eager(served, network)
    network = load_keras_network(path)  # float32 itself: make_inference_fn computes in 16 bits on a copy
    return InferenceModel(make_inference_fn(network, precision), network, _eager(network, network) if check else None)


def _eager(served, network) -> InferenceModel:
    """`served` called as is (float32, uncompiled), with `network` for its architecture."""
    return InferenceModel(lambda batch: served(batch, training=False), network)


def class_changes(classified: Sequence[ClassifiedPatch], reference: Sequence[ClassifiedPatch]) -> tuple[int, int]:
    """(observed pixels compared, pixels whose class differs) between two classifications of the same patches."""
    compared = changed = 0
    for a, b in zip(classified, reference, strict=True):
        observed = a.classes != 255
        compared += int(observed.sum())
        changed += int(np.count_nonzero(a.classes[observed] != b.classes[observed]))
    return compared, changed


class PrecisionCheck:
    """Counts, as Beam metrics, how many observed pixels a 16-bit precision classifies differently from float32."""

    def __init__(self):
        self._compared = Metrics.counter(NAMESPACE, "precision_check_pixels")
        self._changed = Metrics.counter(NAMESPACE, "precision_check_class_changes")

    def count(self, classified: Sequence[ClassifiedPatch], reference: Sequence[ClassifiedPatch]) -> None:
        """Add one comparison to the counters."""
        compared, changed = class_changes(classified, reference)
        self._compared.inc(compared)
        self._changed.inc(changed)


def classify_records(patches: Sequence[ExportPatch], model, threshold: float) -> tuple[list[ClassifiedPatch], int, int]:
    """Record-wise classification of export patches: (classified in the same order, patches inferred,
    patches skipped because nothing is observed in their core). One model call per record size."""
    results: list[ClassifiedPatch | None] = [None] * len(patches)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    skipped = 0
    for i, patch in enumerate(patches):
        if not patch.core()[1].any():  # nothing observed inside the patch itself: no model call
            classes, probability = not_observed_patch(patch.bands.shape[0] - patch.kernel)
            results[i] = ClassifiedPatch.of(patch, classes, probability)
            skipped += 1
            continue
        by_shape.setdefault(patch.bands.shape, []).append(i)
    for indices in by_shape.values():
        inputs = np.stack([np.nan_to_num(patches[i].bands, nan=0.0) for i in indices]).astype(np.float32, copy=False)
        probabilities = np.asarray(model(inputs, training=False))
        for j, i in enumerate(indices):
            patch = patches[i]
            classes, probability = classify_patch(probabilities[j], patch.observed, patch.kernel, threshold)
            results[i] = ClassifiedPatch.of(patch, classes, probability)
    return results, len(patches) - skipped, skipped


class UNetModelHandler(ModelHandler):
    """What both handlers share: the model (path, precision, the float32 reference of --precision_check,
    loaded once per worker process, on a GPU if required), the threshold and the `patches_inferred` counter."""

    need_network = False
    """Whether `load_model` must also load the Keras network (large tiles need its architecture)."""

    def __init__(self, model_path: str, *, threshold: float, precision: str = "float32", max_batch_size: int = 16,
                 require_gpu: bool = False, precision_check: bool = False):
        super().__init__()
        self._model_path = model_path
        self._threshold = threshold
        self._precision = precision
        self._max_batch = max_batch_size
        self._require_gpu = require_gpu
        self._check = precision_check  # load_inference_model ignores it at float32
        self._checker = PrecisionCheck()
        self._inferred = Metrics.counter(NAMESPACE, "patches_inferred")

    def load_model(self) -> InferenceModel:
        """Load the model (once per worker process; RunInference shares it between threads), on a GPU if required."""
        check_gpu(self._require_gpu)
        return load_inference_model(self._model_path, self._precision, need_network=self.need_network, check=self._check)

    def update_model_path(self, model_path: str | None = None) -> None:
        """Point the handler at another model (Beam's model-update hook)."""
        self._model_path = model_path or self._model_path

    def compare_with_reference(self, model, classified: Sequence[ClassifiedPatch],
                               classify: Callable[[Any], Sequence[ClassifiedPatch]]) -> None:
        """With --precision_check (the model has a float32 reference): count the pixels whose class differs
        between `classified` and `classify(reference)`, the same inputs classified in float32."""
        reference = getattr(model, "reference", None)  # tests pass a bare Keras model
        if reference is not None and classified:
            self._checker.count(classified, classify(reference))

    def get_metrics_namespace(self) -> str:
        """RunInference's metrics namespace."""
        return RUN_INFERENCE_NAMESPACE


class PatchModelHandler(UNetModelHandler):
    """Runs the U-Net on batches of export patches and returns their classes at the threshold.

    The model sees the whole kernel-buffered record (its context); the buffer is cropped from the
    probabilities afterwards, and not-observed pixels stay 255 (DESIGN.md §2).
    """

    def __init__(self, model_path: str, *, threshold: float, min_batch_size: int = 1, max_batch_size: int = 16, require_gpu: bool = False,
                 precision: str = "float32", precision_check: bool = False):
        super().__init__(model_path, threshold=threshold, precision=precision, max_batch_size=max_batch_size,
                         require_gpu=require_gpu, precision_check=precision_check)
        self._min_batch = min_batch_size
        self._skipped = Metrics.counter(NAMESPACE, "patches_not_observed")

    def batch_elements_kwargs(self):
        """Batch sizes for RunInference's BatchElements."""
        return {"min_batch_size": self._min_batch, "max_batch_size": self._max_batch}

    def run_inference(self, batch: Sequence[Any], model, inference_args=None) -> Iterable[ClassifiedPatch]:
        """Classify a batch of ExportPatch: one model call per distinct record size in the batch."""
        results, inferred, skipped = classify_records(batch, model, self._threshold)
        self._inferred.inc(inferred)
        self._skipped.inc(skipped)
        self.compare_with_reference(model, results, lambda reference: classify_records(batch, reference, self._threshold)[0])
        return results

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        """Bytes of input in a batch (RunInference's throughput metric)."""
        return sum(patch.bands.nbytes for patch in batch)


class GridYearModelHandler(UNetModelHandler):
    """Classifies whole grid-years by large tiles (`model.tiling`): one grid-year per model call batch.

    Memory per worker: the grid-year's records (as read) plus its mosaic (~300 MB of float32 bands for a
    C9 grid-year, `model.tiling.mosaic_bytes`) plus one batch of tiles, whose size is cut so that
    `model.tiling.tile_memory` stays within `memory_bytes`.
    """

    need_network = True

    def __init__(self, model_path: str, *, threshold: float, tile: int | None, precision: str = "float32", max_batch_size: int = 16,
                 memory_bytes: int = 12 << 30, require_gpu: bool = False, precision_check: bool = False):
        super().__init__(model_path, threshold=threshold, precision=precision, max_batch_size=max_batch_size,
                         require_gpu=require_gpu, precision_check=precision_check)
        self._tile = tile
        self._memory = memory_bytes
        self._tiled = Metrics.counter(NAMESPACE, "grid_years_large_tiles")
        self._fallback = Metrics.counter(NAMESPACE, "grid_years_record_wise_fallback")
        self._pixels = Metrics.counter(NAMESPACE, "pixels_inferred")

    def batch_elements_kwargs(self):
        """One grid-year per call: a grid-year is already hundreds of records."""
        return {"min_batch_size": 1, "max_batch_size": 1}

    def run_inference(self, batch: Sequence[GridYearRecords], model: InferenceModel, inference_args=None) -> Iterable[list]:
        """Classify each grid-year of the batch: large tiles, or record-wise where the export's buffer is too small."""
        results = []
        for records in batch:
            classified = self._classify(records, model, count=True)
            self.compare_with_reference(model, classified, functools.partial(self._classify, records, count=False))
            results.append(classified)
        return results

    def _classify(self, records: GridYearRecords, model: InferenceModel, count: bool) -> list[ClassifiedPatch]:
        from model.tiling import classify_large_tiles, tiling_unavailable

        if not records.patches:
            return []
        reason = tiling_unavailable(records.geometry, model.network)
        if reason:
            if count:
                log.warning("%s", reason)
                self._fallback.inc()
            classified, inferred, _ = classify_records(records.patches, model, self._threshold)
            if count:
                self._inferred.inc(inferred)
            return classified
        classified = classify_large_tiles(
            model.predict, model.network, records.geometry, records.patches, self._threshold, self._tile, self._max_batch,
            memory_bytes=self._memory, precision=self._precision, on_plan=self._count_pixels if count else None,
        )
        if count:
            self._tiled.inc()
            self._inferred.inc(len(classified))  # one per patch read
        return classified

    def _count_pixels(self, plan) -> None:
        self._pixels.inc(plan.inferred_pixels)

    def get_num_bytes(self, batch: Sequence[GridYearRecords]) -> int:
        """Bytes of input in a batch (RunInference's throughput metric)."""
        return sum(p.bands.nbytes for records in batch for p in records.patches)


def _handler(route, config: RunConfig) -> ModelHandler:
    """The handler that classifies a route's grids with the run's settings: large tiles or record-wise."""
    common = {
        "threshold": config.threshold,
        "precision": config.inference_precision,
        "max_batch_size": config.max_batch_size,
        "require_gpu": config.require_gpu,
        "precision_check": config.precision_check,
    }
    if config.large_tiles:
        return GridYearModelHandler(route.path, tile=config.inference_tile, memory_bytes=config.inference_memory_bytes, **common)
    return PatchModelHandler(route.path, min_batch_size=config.min_batch_size, **common)


def _patches_of(element):
    _, classified = element
    for patch in classified:
        yield patch.key, patch


class ClassifyPatches(beam.PTransform):
    """(PatchKey, ExportPatch) → (PatchKey, ClassifiedPatch), each grid classified by its model; with
    `config.large_tiles`, (GridYearKey, GridYearRecords) → (PatchKey, ClassifiedPatch) by large tiles.

    Routing is a `Partition` by grid into one RunInference per model rather than Beam's
    `KeyedModelHandler` with `KeyModelMapping`: with a mapping, RunInference batches elements of every
    model together and then splits each batch per model, so a state model's share of a batch is often a
    handful of patches; a partition gives each model its own BatchElements and full batches.
    """

    def __init__(self, *, config: RunConfig):
        super().__init__()
        self._config = config

    def expand(self, patches: beam.PCollection) -> beam.PCollection:
        config = self._config
        routes = list(config.routes)
        parts = patches | "Route by grid" >> beam.Partition(
            lambda element, n: routes.index(config.route_for(element[0].grid)), len(routes)
        )
        classified = []
        for route, part in zip(routes, parts):
            keyed = typehints.KV[PatchKey, ClassifiedPatch]
            inference = RunInference(KeyedModelHandler(_handler(route, config)))
            if config.large_tiles:
                inferred = (
                    part
                    | f"Infer {route.name}" >> inference
                    | f"Patches of {route.name}" >> beam.FlatMap(_patches_of).with_output_types(keyed)
                )
            else:
                inferred = part | f"Infer {route.name}" >> inference.with_output_types(keyed)
            classified.append(inferred)
        return classified | "Merge models" >> beam.Flatten()
