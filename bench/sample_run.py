"""The sample and an untrained demo-width U-Net, as the update and streaming benchmarks both start from them."""
from __future__ import annotations

import os
import tempfile


def sample_and_model(width: int, depth: int, prefix: str):
    """(work folder, GeneratedSample, path of a .keras U-Net of `width` base filters and `depth`) in a new temp folder."""
    from model.unet import build_unet
    from pipeline.console import import_tensorflow_quietly
    from pipeline.contract import BAND_PRESETS
    from pipeline.demo.sample import generate_sample

    import_tensorflow_quietly()
    workdir = tempfile.mkdtemp(prefix=prefix)
    sample = generate_sample(os.path.join(workdir, "sample"))
    model = os.path.join(workdir, "unet.keras")
    build_unet(len(BAND_PRESETS["appendix"]), base_filters=width, depth=depth, patch_size=None).save(model)
    return workdir, sample, model
