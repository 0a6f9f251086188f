"""The GPU check: a job that asked for GPUs fails early and clearly when its workers have none."""
from __future__ import annotations

from pipeline.errors import UserError


def check_gpu(required: bool) -> None:
    """Raise UserError when GPUs were requested and TensorFlow sees none (a misconfigured worker image).

    Called where inference runs: in the local process before anything is read, and on Dataflow in
    the inference handler's model loading on each worker (the launcher VM has no GPU by design).
    """
    if not required:
        return
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        raise UserError("--require_gpu true, but TensorFlow sees no GPU (check the worker accelerator and the CUDA image)")
