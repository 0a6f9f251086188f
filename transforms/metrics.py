"""The pipeline's Beam metrics namespaces, in one place: every counter the run summary reports lives here."""
from __future__ import annotations

NAMESPACE = "mining_mapper"
"""Inference, filters and writing; the run summary collects every namespace that starts with this."""
READ_NAMESPACE = "mining_mapper.read"
"""Reading the Earth Engine exports."""
RUN_INFERENCE_NAMESPACE = "BeamML_MiningMapper"
"""Beam RunInference's own metrics (batch sizes, inference time) for our model handler."""
