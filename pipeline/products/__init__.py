"""What users do with the maps once they exist (issue 8).

- `stats`: mining hectares per year, per grid and per class_id from true pixel areas, window by window.
- `integrate`: the prevalence integration of the mining maps with a land-cover map (DESIGN.md §5).
- `classify_type`: the class_id (type and substance) of each mining component from occurrence data (§6).
- `accuracy`: a stratified sample design for a rare class and the Olofsson et al. (2014) estimators.
- `report`: one self-contained HTML page per run and a STAC catalog of its COGs.

`io` routes every path through one place, so local paths and ``gs://`` work alike.
"""
