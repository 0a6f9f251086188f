"""Beam PTransforms: thin shells over the pure functions in `pipeline`."""
