"""Mining mapper: the MapBiomas Collection 9 mining method as a reproducible Beam pipeline."""

__version__ = "0.1.0"
