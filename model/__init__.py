"""The U-Net, its preprocessing, training, evaluation and serving export; the inference functions.

    from model import build_unet, load_serving_model, make_inference_fn, receptive_field
"""
from pipeline.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "build_unet": "model.unet",
    "load_serving_model": "model.export",
    "make_inference_fn": "model.inference",
    "classify_large_tiles": "model.tiling",
})
