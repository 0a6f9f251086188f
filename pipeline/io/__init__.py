"""Formats and storage: files (local and gs://), TFRecord shards, Example records, Earth Engine exports,
annual rasters, COGs, raw inference results and the run summary.

    from pipeline.io import find_annual_rasters, read_class_series, RunSummary
"""
from pipeline.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "find_annual_rasters": "pipeline.io.rasters",
    "read_class_series": "pipeline.io.rasters",
    "ClassSeries": "pipeline.io.rasters",
    "discover": "pipeline.io.rasters",
    "read_export": "pipeline.io.export_reader",
    "read_export_patches": "pipeline.io.export_reader",
    "parse_mixer": "pipeline.io.export_layout",
    "encode_cog": "pipeline.io.cog",
    "classification_bands": "pipeline.io.cog",
    "publish_atomically": "pipeline.io.filesystem",
    "RunSummary": "pipeline.io.summary",
})
