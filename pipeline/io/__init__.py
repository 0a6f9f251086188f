"""Formats and storage: files (local and gs://), TFRecord shards, Example records, Earth Engine exports,
annual rasters, COGs and the run summary."""
