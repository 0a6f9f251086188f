"""Batched U-Net inference with Beam's RunInference: patches in, classified patches out.

`PatchModelHandler` is a Beam `ModelHandler` (the contract of apache_beam.ml.inference): RunInference
loads the model once per worker process and shares it between threads, batches patches between
the min and max batch sizes, and calls `run_inference` per batch. The same code runs on CPU and GPU
(TensorFlow places the model). Each grid is routed to its model (national, or a state model).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam import typehints
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference
from apache_beam.metrics import Metrics

from model.gpu import check_gpu
from pipeline.config import RunConfig
from pipeline.elements import ClassifiedPatch, ExportPatch, PatchKey
from pipeline.method.tiles import classify_patch, not_observed_patch
from transforms.metrics import NAMESPACE, RUN_INFERENCE_NAMESPACE


def load_model(path: str):
    """Load a serving model: a Keras file (`.keras`/`.h5`) directly, else through `model.export`."""
    if path.endswith((".keras", ".h5")):
        import keras

        from apache_beam.io.filesystems import FileSystems

        local = path
        if "://" in path:
            import os
            import tempfile

            local = os.path.join(tempfile.mkdtemp(), os.path.basename(path))
            with FileSystems.open(path) as source, open(local, "wb") as target:
                target.write(source.read())
        return keras.models.load_model(local, compile=False)
    from model.export import load_serving_model

    return load_serving_model(path)


class PatchModelHandler(ModelHandler[ExportPatch, ClassifiedPatch, Any]):
    """Runs the U-Net on batches of export patches and returns their classes at the threshold.

    The model sees the whole kernel-buffered record (its context); the buffer is cropped from the
    probabilities afterwards, and not-observed pixels stay 255 (DESIGN.md §2).
    """

    def __init__(self, model_path: str, *, threshold: float, min_batch_size: int = 1, max_batch_size: int = 16, require_gpu: bool = False):
        super().__init__()
        self._model_path = model_path
        self._require_gpu = require_gpu
        self._threshold = threshold
        self._batch = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}
        self._inferred = Metrics.counter(NAMESPACE, "patches_inferred")
        self._skipped = Metrics.counter(NAMESPACE, "patches_not_observed")

    def load_model(self):
        """Load the serving model (once per worker process; RunInference shares it), on a GPU if required."""
        check_gpu(self._require_gpu)
        return load_model(self._model_path)

    def update_model_path(self, model_path: str | None = None) -> None:
        """Point the handler at another model (Beam's model-update hook)."""
        self._model_path = model_path or self._model_path

    def batch_elements_kwargs(self):
        """Batch sizes for RunInference's BatchElements."""
        return dict(self._batch)

    def run_inference(self, batch: Sequence[Any], model, inference_args=None) -> Iterable[ClassifiedPatch]:
        """Classify a batch of ExportPatch: one model call per distinct record size in the batch."""
        results: list[ClassifiedPatch | None] = [None] * len(batch)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, patch in enumerate(batch):
            if not patch.core()[1].any():  # nothing observed inside the patch itself: no model call
                classes, probability = not_observed_patch(patch.bands.shape[0] - patch.kernel)
                results[i] = ClassifiedPatch.of(patch, classes, probability)
                self._skipped.inc()
                continue
            by_shape.setdefault(patch.bands.shape, []).append(i)
        for indices in by_shape.values():
            inputs = np.stack([np.nan_to_num(batch[i].bands, nan=0.0) for i in indices]).astype(np.float32, copy=False)
            probabilities = np.asarray(model(inputs, training=False))
            for j, i in enumerate(indices):
                patch = batch[i]
                classes, probability = classify_patch(probabilities[j], patch.observed, patch.kernel, self._threshold)
                results[i] = ClassifiedPatch.of(patch, classes, probability)
            self._inferred.inc(len(indices))
        return results

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        """Bytes of input in a batch (RunInference's throughput metric)."""
        return sum(patch.bands.nbytes for patch in batch)

    def get_metrics_namespace(self) -> str:
        """RunInference's metrics namespace."""
        return RUN_INFERENCE_NAMESPACE


class ClassifyPatches(beam.PTransform):
    """(PatchKey, ExportPatch) → (PatchKey, ClassifiedPatch), each grid classified by its model.

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
            handler = KeyedModelHandler(
                PatchModelHandler(
                    route.path,
                    threshold=config.threshold,
                    min_batch_size=config.min_batch_size,
                    max_batch_size=config.max_batch_size,
                    require_gpu=config.require_gpu,
                )
            )
            classified.append(
                part | f"Infer {route.name}" >> RunInference(handler).with_output_types(typehints.KV[PatchKey, ClassifiedPatch])
            )
        return classified | "Merge models" >> beam.Flatten()
