"""The sample generator: Earth Engine–format exports and training patches for demos and tests."""
