"""Beam RunInference handler for the exported U-Net, and the grid-to-model routing (national + Minas Gerais).

`ServingModelHandler(path)` is a `ModelHandler[np.ndarray, PredictionResult, ServingModel]`: elements
are raw band patches (H, W, bands) float32 in preset order; each result's `inference` is the probability
(H, W, 1). It does not need tensorflow_hub (which Beam's own TFModelHandlerNumpy imports), and works on
CPU and GPU unchanged. Wrap it in `KeyedModelHandler` to carry (grid, year, patch) keys through.

`ModelRouting` says which model serves which grid: the published Collection 9 used a second, state
model for the grids in Minas Gerais and the national model everywhere else.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from model.export import ServingModel, load_serving_model
from pipeline.errors import UserError


class ServingModelHandler(ModelHandler[np.ndarray, PredictionResult, ServingModel]):
    """Loads an exported mining-mapper model once per worker and runs it on batches of raw patches."""

    def __init__(
        self,
        model_path: str,
        *,
        min_batch_size: int | None = None,
        max_batch_size: int | None = None,
        large_model: bool = False,
        model_copies: int | None = None,
        **kwargs,
    ):
        """`model_path`: an exported model folder; batching and sharing options as Beam's handlers."""
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            large_model=large_model,
            model_copies=model_copies,
            **kwargs,
        )
        self._model_path = model_path

    def load_model(self) -> ServingModel:
        """Load the SavedModel and model card (called by RunInference on each worker)."""
        return load_serving_model(self._model_path)

    def run_inference(
        self, batch: Sequence[np.ndarray], model: ServingModel, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        """Stack the patches, run the model once, return one PredictionResult per patch."""
        if not batch:
            return []
        probabilities = model(np.stack([np.asarray(x, dtype=np.float32) for x in batch]))
        return [PredictionResult(x, p, self._model_path) for x, p in zip(batch, probabilities)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        """Bytes in a batch (for Beam's metrics)."""
        return int(sum(np.asarray(x).nbytes for x in batch))

    def get_metrics_namespace(self) -> str:
        """Namespace of RunInference metrics for this handler."""
        return "MiningMapper_UNet"

    def update_model_path(self, model_path: str | None = None):
        """Point the handler at another model (Beam's model-update side input)."""
        self._model_path = model_path or self._model_path

    @property
    def model_path(self) -> str:
        """The exported model folder this handler loads."""
        return self._model_path


@dataclass
class ModelRouting:
    """Which exported model classifies which grid: a default (national) model and regional overrides."""

    default_name: str
    default_path: str
    routes: dict[str, tuple[str, frozenset[int]]] = field(default_factory=dict)

    def __post_init__(self):
        owner: dict[int, str] = {}
        for name, (_, grids) in self.routes.items():
            if name == self.default_name:
                raise UserError(f"routing: model name {name!r} is used twice")
            for grid in grids:
                if grid in owner:
                    raise UserError(f"routing: grid {grid} is routed to both {owner[grid]!r} and {name!r}")
                owner[grid] = name
        self._owner = owner

    def model_for(self, grid: int) -> str:
        """The name of the model that classifies a grid."""
        return self._owner.get(int(grid), self.default_name)

    def path_of(self, name: str) -> str:
        """The exported model folder of a model name."""
        if name == self.default_name:
            return self.default_path
        try:
            return self.routes[name][0]
        except KeyError:
            raise UserError(f"routing: no model named {name!r}") from None

    @property
    def names(self) -> list[str]:
        """All model names, default first."""
        return [self.default_name, *sorted(self.routes)]

    def handlers(self, **handler_kwargs) -> dict[str, ServingModelHandler]:
        """One ServingModelHandler per model name (for one RunInference per model after a Partition)."""
        return {name: ServingModelHandler(self.path_of(name), **handler_kwargs) for name in self.names}

    @classmethod
    def from_dict(cls, config: dict, source: str = "routing") -> "ModelRouting":
        """Build from {"default": {"name", "path"}, "routes": [{"name", "path", "grids": [ids]}]}."""
        try:
            default = config["default"]
            routes = {
                r["name"]: (r["path"], frozenset(int(g) for g in r["grids"])) for r in config.get("routes", [])
            }
            return cls(default.get("name", "national"), default["path"], routes)
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"{source}: not a model routing table ({error!r})") from None

    @classmethod
    def from_json(cls, path: str) -> "ModelRouting":
        """Read a routing table from a JSON file (see `from_dict`)."""
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            raise UserError(f"{path}: no such routing file")
        with tf.io.gfile.GFile(path, "r") as handle:
            try:
                config = json.load(handle)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}: not valid JSON ({error})") from None
        return cls.from_dict(config, source=path)
