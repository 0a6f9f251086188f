"""Beam PTransforms: thin shells over the pure functions in `pipeline`; `MiningMapperJob` is the whole job
(`StreamingJob` the streaming one).

    with beam.Pipeline() as p:
        statuses = p | MiningMapperJob(config=build_config(options))
"""
from pipeline.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "MiningMapperJob": "transforms.job",
    "StreamingJob": "transforms.streaming",
    "ReadEarthEngineExports": "transforms.read",
    "ClassifyPatches": "transforms.inference",
    "PatchModelHandler": "transforms.inference",
    "GridYearModelHandler": "transforms.inference",
    "FilterTiles": "transforms.filtering",
    "WriteGridYears": "transforms.write",
    "WriteRawResults": "transforms.raw",
    "DecideRawReuse": "transforms.raw",
})
