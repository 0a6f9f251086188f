"""Install the mining mapper: the Beam pipeline, its transforms, the U-Net and the `mining-mapper` command.

The same file is used by Dataflow workers (`--setup_file`), so it lists every package the runtime code
(pipeline/, transforms/, model/) imports directly; jax is optional (only under KERAS_BACKEND=jax).
Versions of the core stack are pinned; `constraints.txt` pins the whole resolved environment.
"""
from setuptools import find_packages, setup

VERSION = "0.1.0"

INSTALL_REQUIRES = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow==2.21.0",
    "tensorflow-transform==1.21.0",
    "tfx-bsl==1.21.0",  # tensorflow-transform's tensor adapters (model/preprocessing.py)
    "keras>=3.10,<4",
    "protobuf>=5.26,<7",  # tf.train.Example decoding errors (model/data.py)
    "pyarrow>=16",  # record batches for tensorflow-transform (model/preprocessing.py); Beam bounds it above
    "rasterio>=1.4.3,<1.5",
    "affine>=2.4,<4",
    "earthengine-api>=1.7,<2",
    "google-api-core>=2.17,<3",
    "requests>=2.31,<3",  # connection errors named in one line (pipeline/failures.py)  # the one retry layer for Earth Engine requests (pipeline/earthengine/retry.py)
    "google-auth>=2.20,<3",
    "google-cloud-storage>=3.0,<4",
    "google-crc32c>=1.5,<2",  # TFRecord framing checksums (pipeline/io/tfrecord.py)
    "numpy>=2.0,<2.5",
    "scipy>=1.14,<2",
    "geopandas>=1.0,<2",
    "pyogrio>=0.10,<1",
    "shapely>=2.0,<3",
    "pyproj>=3.6,<4",
    "pystac>=1.10,<2",
    "matplotlib>=3.9,<4",
]

TEST_REQUIRES = [
    "pytest>=8",
    "rio-cogeo>=7.0,<8",  # the tests validate every COG the pipeline writes with rio_cogeo's cog_validate
    "pytest-xdist>=3.6",
    "hypothesis>=6.100",
    "gcp-storage-emulator>=2024.8.3",
    "websockets>=12",  # the report's browser test talks to headless Chromium over the DevTools protocol
    "pyyaml>=6",  # cloudbuild.yaml is parsed by the template tests
    "jsonschema>=4.18",  # the STAC documents are validated offline against vendored schemas (referencing)
    "ruff==0.17.6",  # make lint (rules in ruff.toml)
]

setup(
    name="mining-mapper",
    version=VERSION,
    description="MapBiomas Collection 9 mining mapping method as an Apache Beam pipeline.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*", "model", "model.*"]),
    package_data={"pipeline": ["data/*.json", "data/*.csv"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={"console_scripts": ["mining-mapper=pipeline.cli:main"]},
)
