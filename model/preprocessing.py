"""tf.Transform preprocessing: per-band z-score from analyzers (default) or the published raw bytes (c9-code).

The transform works on pixels: its raw features are one float32 scalar per band (an instance is a
pixel), so the same graph serves any patch size. `analyze` runs `tft_beam.AnalyzeDataset` in a Beam
pipeline over the observed pixels of the training records (not-observed pixels — any band non-finite
or the first band 0 — would bias the statistics and are left out). `transform_images` applies the
graph to image batches (B, H, W, bands) by flattening to pixels and back.

Besides the network input (`bands`), the graph outputs the statistics themselves (`band_mean`,
`band_std`), so they can be read back exactly for the model card and tests.

Note: importing tensorflow_transform sets TF_USE_LEGACY_KERAS=1 (it needs Keras 2 for its own layer),
after which `tf.keras` means tf_keras; this package uses `import keras` (Keras 3) throughout.
"""
from __future__ import annotations

import logging
import tempfile
from typing import Sequence

import numpy as np

from model.data import FileInfo, PatchSpec, block_of, example_arrays, iter_records, observed_mask, parse_example
from pipeline.contract import check_normalization

log = logging.getLogger(__name__)

OUTPUT_BANDS = "bands"
OUTPUT_MEAN = "band_mean"
OUTPUT_STD = "band_std"

DEFAULT_BEAM_ARGS = ("--runner=FnApiRunner",)  # the DirectRunner would try Prism (a download)


def raw_feature_spec(bands: Sequence[str]) -> dict:
    """The transform's raw features: one float32 scalar per band (instances are pixels)."""
    import tensorflow as tf

    return {band: tf.io.FixedLenFeature([], tf.float32) for band in bands}


def make_preprocessing_fn(bands: Sequence[str], normalization: str = "zscore"):
    """The tf.Transform `preprocessing_fn` for a band list.

    'zscore': (x - mean) / std per band, mean and population std from `tft.mean`/`tft.var` over the
    analysed pixels (in float64; a constant band keeps std 1). 'c9-code': the stored byte values
    themselves (0–255 as float: mean 0, std 1, no division), as the published Collection 9 notebooks feed
    the network (DESIGN.md §1.5); no analyzers. Non-finite inputs become 0 (the export's masked value)
    first, so a masked pixel never spreads NaN through the convolutions.
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    check_normalization(normalization)
    bands = list(bands)

    def preprocessing_fn(inputs):
        scaled, means, stds = [], [], []
        for band in bands:
            x = tf.cast(inputs[band], tf.float64)
            x = tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))
            if normalization == "zscore":
                mean = tft.mean(x, name=f"mean_{band}")
                var = tft.var(x, name=f"var_{band}")
                std = tf.where(var > 0, tf.sqrt(var), tf.ones_like(var))
            else:  # c9-code: the published notebooks feed the stored bytes with no normalisation at all
                mean = tf.constant(0.0, tf.float64)
                std = tf.constant(1.0, tf.float64)
            scaled.append((x - mean) / std)
            means.append(mean)
            stds.append(std)
        rows = tf.shape(inputs[bands[0]])[0]
        stack = lambda values: tf.broadcast_to(tf.cast(tf.stack(values), tf.float32)[None, :], [rows, len(bands)])
        return {
            OUTPUT_BANDS: tf.cast(tf.stack(scaled, axis=-1), tf.float32),
            OUTPUT_MEAN: stack(means),
            OUTPUT_STD: stack(stds),
        }

    return preprocessing_fn


def arrow_schema(bands: Sequence[str]):
    """Arrow schema of the pixel RecordBatches fed to the analysis: one large_list<float32> per band."""
    import pyarrow as pa

    return pa.schema([pa.field(band, pa.large_list(pa.float32())) for band in bands])


def tensor_adapter_config(bands: Sequence[str]):
    """The TFXIO TensorAdapterConfig describing the pixel RecordBatches to tft_beam."""
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.tfxio import tensor_adapter, tensor_representation_util

    schema = schema_utils.schema_from_feature_spec(raw_feature_spec(bands))
    representations = tensor_representation_util.InferTensorRepresentationsFromSchema(schema)
    return tensor_adapter.TensorAdapterConfig(arrow_schema(bands), representations)


def pixels_record_batch(image, bands):  # no annotations: Beam would log them as unparsed hints
    """The observed pixels of one image (H, W, bands) as an Arrow RecordBatch, one row per pixel.

    `image` is a numpy array, `bands` the band names (column order).
    """
    import pyarrow as pa

    pixels = image[observed_mask(image)]
    offsets = pa.array(np.arange(pixels.shape[0] + 1, dtype=np.int64))
    columns = [pa.LargeListArray.from_arrays(offsets, pa.array(pixels[:, i], type=pa.float32())) for i in range(len(bands))]
    return pa.RecordBatch.from_arrays(columns, schema=arrow_schema(bands))


class _FilePixels:
    """Beam FlatMap callable: the training images of one file (optionally only a split's blocks)."""

    def __init__(self, spec: PatchSpec, block_size: float | None, validation_blocks, keep: str):
        self.spec = spec
        self.block_size = block_size
        self.validation_blocks = {tuple(b) for b in validation_blocks}
        self.keep = keep

    def __call__(self, file):
        """Yield the images of one (path, compression) file, filtered to the wanted blocks."""
        from model.data import record_coordinates

        path, compression = file
        for index, record in enumerate(iter_records(path, compression)):
            where = f"{path}: record {index}"
            example = parse_example(record, where)
            if self.keep != "all":
                lon, lat = record_coordinates(example, self.spec, where)
                in_val = block_of(lon, lat, self.block_size) in self.validation_blocks
                if in_val != (self.keep == "validation"):
                    continue
            image, _ = example_arrays(example, self.spec)
            yield image


def analyze(
    files: Sequence[FileInfo],
    spec: PatchSpec,
    normalization: str,
    output_dir: str,
    *,
    block_size: float | None = None,
    validation_blocks=(),
    keep: str = "all",
    pipeline_args: Sequence[str] | None = None,
) -> str:
    """Analyse the training pixels with tft_beam and write the transform (TFTransformOutput) to output_dir.

    Runs a Beam pipeline (the FnApiRunner, in process, unless `pipeline_args` name another runner, e.g.
    Dataflow): files -> checked images -> observed-pixel RecordBatches -> AnalyzeDataset -> WriteTransformFn.
    The files must have been checked by `model.data.scan_files`. Returns output_dir.
    """
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import PipelineOptions

    check_normalization(normalization)
    args = list(pipeline_args) if pipeline_args else []
    if not any(a.startswith("--runner") for a in args):
        args = [*DEFAULT_BEAM_ARGS, *args]
    options = PipelineOptions(args)
    bands = list(spec.bands)
    inputs = [(f.path, f.compression) for f in files]
    with tempfile.TemporaryDirectory(prefix="tft-") as local_temp:
        temp_dir = options.get_all_options().get("temp_location") or local_temp
        with beam.Pipeline(options=options) as pipeline:
            with tft_beam.Context(temp_dir=temp_dir):
                batches = (
                    pipeline
                    | "Files" >> beam.Create(inputs)
                    | "Reshuffle" >> beam.Reshuffle()
                    | "Images" >> beam.FlatMap(_FilePixels(spec, block_size, validation_blocks, keep))
                    | "Pixels" >> beam.Map(pixels_record_batch, bands)
                )
                transform_fn = (batches, tensor_adapter_config(bands)) | "Analyze" >> tft_beam.AnalyzeDataset(
                    make_preprocessing_fn(bands, normalization)
                )
                _ = transform_fn | "Write" >> tft_beam.WriteTransformFn(output_dir)
    log.info("transform (%s) analysed over %d file(s): %s", normalization, len(files), output_dir)
    return output_dir


def load_transform(transform_dir: str):
    """The TFTransformOutput written by `analyze`."""
    import tensorflow_transform as tft

    return tft.TFTransformOutput(transform_dir)


def band_statistics(tft_output, bands: Sequence[str]) -> dict[str, dict[str, float]]:
    """The mean and std each band is normalised with, read back from the transform graph."""
    import tensorflow as tf

    probe = {band: tf.constant([0.0], tf.float32) for band in bands}
    out = tft_output.transform_raw_features(probe)
    means = out[OUTPUT_MEAN].numpy()[0]
    stds = out[OUTPUT_STD].numpy()[0]
    return {band: {"mean": float(means[i]), "std": float(stds[i])} for i, band in enumerate(bands)}


def transform_images(transform_layer, images, bands: Sequence[str]):
    """Apply the transform graph to images (B, H, W, bands) -> network input of the same shape (float32).

    Flattens to pixels (the transform's instances), calls the layer on one feature per band, reshapes
    back. Used inside tf.data (training) and inside the serving SavedModel, so both see the same graph.
    """
    import tensorflow as tf

    shape = tf.shape(images)
    flat = tf.reshape(images, [-1, len(bands)])
    features = {band: flat[:, i] for i, band in enumerate(bands)}
    out = transform_layer(features)[OUTPUT_BANDS]
    return tf.reshape(out, shape)
