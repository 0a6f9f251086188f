"""Check, before a run reads anything, that every model it will load is there, readable, and fits the run.

Why: the model is loaded only when the first batch reaches inference, after the exports have been read
(on Dataflow, on a worker, after minutes of start-up); a typo in --model should cost one line, not a job,
and c9-code exports through an appendix model should not quietly write worse maps. The model card
(`model_card.json` of an exported model: bands, preset, input geometry, normalisation) or a local Keras
file's own shapes say what a model takes; one record of the first export says what the exports hold.
"""
from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from pipeline.errors import UserError
from pipeline.failures import first_line

KERAS_SUFFIXES = (".keras", ".h5")
FORMS = ("a .keras/.h5 file, or a folder exported by `mining-mapper train` "
         "(saved_model.pb and model_card.json)")


def model_files(path: str) -> list[str]:
    """The files a model location must hold, by the forms `transforms.inference.load_model` accepts."""
    from model.export import MODEL_CARD

    if path.endswith(KERAS_SUFFIXES):
        return [path]
    return [posixpath.join(path.rstrip("/"), "saved_model.pb"), posixpath.join(path.rstrip("/"), MODEL_CARD)]


def check_model_location(path: str, label: str = "--model") -> None:
    """Raise a one-line UserError when a model file is missing or cannot be read (its first byte)."""
    from pipeline.io.filesystem import exists, open_read

    for file in model_files(path):
        try:
            with open_read(file) as handle:
                handle.read(1)
        except Exception as error:  # noqa: BLE001 - any failure to read is reported as the user's location
            try:
                present = exists(file)
            except Exception:  # noqa: BLE001 - cannot even ask: report the read error
                present = True
            if not present:
                missing = "not found" if file == path else f"no {posixpath.basename(file)}"
                raise UserError(f"{label} {path}: {missing}; expected {FORMS}") from None
            raise UserError(f"{label} {path}: cannot read {file} ({first_line(error, 200)})") from None


def model_label(route) -> str:
    """How a model is named in messages: --model for the national one, else its routing entry."""
    return "--model" if route.name == "national" else f"model '{route.name}' of --model_routing"


def model_contract(path: str) -> dict | None:
    """What a model takes, from its model card (exported folder) or, for a local .keras/.h5 file, the model itself.

    {"bands": [...] or None, "band_count": int or None, "preset": str or None, "size_multiple": int,
    "output": tuple or None}; None for a remote Keras file (its shapes are checked when a worker loads it).
    A card or a model that cannot be read is a UserError naming the path.
    """
    from pipeline.contract import NORMALIZATIONS

    if path.endswith(KERAS_SUFFIXES):
        if "://" in path:
            return None
        import keras

        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as error:  # noqa: BLE001 - any failure to load is the user's model file
            raise UserError(f"--model {path}: cannot load the Keras model ({first_line(error, 200)})") from None
        inputs = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
        output = tuple(model.output_shape) if not isinstance(model.output_shape, list) else None
        return {"bands": None, "band_count": inputs[-1] if inputs and len(inputs) == 4 else None, "inputs": inputs,
                "preset": None, "size_multiple": 1, "output": output}
    from model.export import read_model_card

    card = read_model_card(path)
    bands = card.get("bands")
    if not isinstance(bands, list) or not bands:
        raise UserError(f"--model {path}: its model_card.json names no input bands")
    kind = (card.get("normalization") or {}).get("kind")
    if kind is not None and kind not in NORMALIZATIONS:
        raise UserError(f"--model {path}: its model card's normalization {kind!r} is none of {', '.join(NORMALIZATIONS)}")
    depth = int((card.get("architecture") or {}).get("depth", 0) or 0)
    geometry = card.get("input") or {}
    count = geometry.get("band_count", len(bands))
    if count != len(bands):
        raise UserError(f"--model {path}: its model card says {count} input bands but names {len(bands)}")
    return {"bands": [str(b) for b in bands], "band_count": len(bands), "inputs": None, "preset": card.get("preset"),
            "size_multiple": int(geometry.get("size_multiple", 2 ** depth)), "output": None}


def check_model_contract(label: str, path: str, contract: dict, preset: str, bands: tuple[str, ...]) -> None:
    """Refuse a model whose bands, input band count or output shape do not fit the run's band preset."""
    if contract["bands"] is not None and tuple(contract["bands"]) != tuple(bands):
        raise UserError(f"{label} {path}: takes bands {', '.join(contract['bands'])} (preset {contract['preset']}), "
                        f"but --band_preset {preset} gives {', '.join(bands)}; run with --band_preset "
                        f"{contract['preset'] or '…'} or another model")
    inputs = contract.get("inputs")
    if inputs is not None and (len(inputs) != 4 or inputs[-1] != len(bands)):
        raise UserError(f"{label} {path}: its input is {inputs}, but --band_preset {preset} gives "
                        f"(batch, H, W, {len(bands)}); a model of {len(bands)} input bands is needed")
    output = contract.get("output")
    if output is not None and (len(output) != 4 or output[-1] != 1):
        raise UserError(f"{label} {path}: its output is {output}; expected (batch, H, W, 1): one mining probability per pixel")


def check_exports_fit(label: str, path: str, contract: dict, probe, preset: str, bands: tuple[str, ...]) -> None:
    """Refuse exports whose bands lack the model's, or whose record size the model cannot take (one record read)."""
    missing = [b for b in bands if b not in probe.bands]
    if missing:
        raise UserError(f"{probe.shard}: lacks band(s) {', '.join(missing)} of --band_preset {preset} that {label} {path} "
                        f"takes (the records have {', '.join(probe.bands)}): exported with another preset?")
    extra = probe.side - probe.patch_size
    if extra < 0 or extra % 2:
        raise UserError(f"{probe.shard}: records are {probe.side}x{probe.side}, which is not the mixer's patch "
                        f"{probe.patch_size} + an even kernel")
    multiple = contract["size_multiple"]
    if probe.side % multiple:
        raise UserError(f"{probe.shard}: records are {probe.side}x{probe.side}, but {label} {path} takes sides that are "
                        f"multiples of {multiple} (a U-Net of depth {multiple.bit_length() - 1})")


def check_models(config, discovered: Mapping[str, Sequence[int]] | None = None) -> None:
    """Before reading, every model of the run (the national one and the state models of the routing file):
    there and readable (`check_model_location`), fitting the band preset, and fitting one export's records.

    One loop over the models first; only when one of them has a contract (a model card, or a local Keras
    file) is one record read: of the first asked grid-year that `discovered` (the run's listing,
    `pipeline.options.discover_grid_years`) holds an export for. `discovered` None (a streaming launch,
    before its exports exist) reads none; a run without a readable export goes on (the read reports it
    per grid-year).
    """
    from pipeline.io.export_layout import export_dir_of
    from pipeline.io.export_reader import probe_export

    contracts = []
    for route in config.routes:
        label = model_label(route)
        check_model_location(route.path, label)
        contract = model_contract(route.path)
        if contract is not None:
            check_model_contract(label, route.path, contract, config.band_preset, config.bands)
            contracts.append((label, route.path, contract))
    if not contracts or not discovered:
        return
    first = next(((grid, year) for grid, year in config.grid_years() if year in discovered.get(grid, ())), None)
    if first is None:
        return
    probe = probe_export(export_dir_of(config.exports, *first), *first)
    if probe is None:
        return
    for label, path, contract in contracts:
        check_exports_fit(label, path, contract, probe, config.band_preset, config.bands)
