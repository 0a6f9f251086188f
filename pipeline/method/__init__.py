"""The method as pure numpy: the post-classification filters, the per-tile steps, true pixel areas.

    from pipeline.method import FilterParams, apply_chain
    result = apply_chain(stack, FilterParams(mode="c9-code"), with_origin=True)
"""
from pipeline.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "FilterParams": "pipeline.method.filters",
    "ChainResult": "pipeline.method.filters",
    "apply_chain": "pipeline.method.filters",
    "gap_fill": "pipeline.method.filters",
    "temporal_filter": "pipeline.method.filters",
    "spatial_filter": "pipeline.method.filters",
    "frequency_filter": "pipeline.method.filters",
    "PixelAreas": "pipeline.method.areas",
    "pixel_areas_m2": "pipeline.method.areas",
    "hectares_per_year": "pipeline.method.areas",
})
