"""Subcommands of `mining-mapper`, one module each.

Every module here defines `NAME`, `HELP`, `configure(parser)` and `run(args) -> int`, and is found by
`pipeline.cli` without being listed anywhere. Heavy imports (TensorFlow, Beam, Earth Engine) belong
inside `run`, so that `mining-mapper --help` stays fast.
"""
