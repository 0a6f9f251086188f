"""Check, before a run reads anything, that every model it will load is there and readable.

Why: the model is loaded only when the first batch reaches inference, after the exports have been read
(on Dataflow, on a worker, after minutes of start-up); a typo in --model should cost one line, not a job.
"""
from __future__ import annotations

import posixpath
from collections.abc import Iterable

from pipeline.errors import UserError

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
    from apache_beam.io.filesystems import CompressionTypes, FileSystems

    for file in model_files(path):
        try:
            with FileSystems.open(file, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                handle.read(1)
        except Exception as error:  # noqa: BLE001 - any failure to read is reported as the user's location
            try:
                present = FileSystems.exists(file)
            except Exception:  # noqa: BLE001 - cannot even ask: report the read error
                present = True
            if not present:
                missing = "not found" if file == path else f"no {posixpath.basename(file)}"
                raise UserError(f"{label} {path}: {missing}; expected {FORMS}") from None
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"{label} {path}: cannot read {file} ({reason[:200]})") from None


def check_models(routes: Iterable) -> None:
    """Check every model of a run (the national one and the state models of the routing file)."""
    for route in routes:
        check_model_location(route.path, "--model" if route.name == "national" else f"model '{route.name}' of --model_routing")
