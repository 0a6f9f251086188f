"""Everything the method does inside Earth Engine, as real `earthengine-api` calls.

Modules (each imports `ee` only inside functions, so importing them is cheap):

* `auth`      — credentials (ADC or a service-account key), project, high-volume endpoint, one init per process
* `mosaic`    — annual Landsat TOA median mosaics, QA mask, indices, byte scaling, band presets (DESIGN §1.1–1.2)
* `grid`      — the Collection 9 grid and cell selection from reference data (DESIGN §1.3)
* `exports`   — TFRecord exports per (grid, year), training patches, resumable submission, waiting (§1.4, §2)
* `ingest`    — COGs registered as images of an ImageCollection asset (§1.7)
* `poststeps` — spatial filter, prevalence integration, class_id, as export-to-asset tasks (§3, §5, §6)
* `tables`    — the prevalence and class_id tables kept as data in `pipeline/data/`
* `retry`, `storage`, `options` — the one retry layer (google.api_core, the client's own off) on 429/5xx, Cloud Storage helpers, shared command-line options
"""
