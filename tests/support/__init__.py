"""Helpers shared by the tests (real data locations, configs, stand-in models)."""
