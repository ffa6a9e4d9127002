"""The package version: one place, imported by the registry, the pipeline cache keys and the package."""
__version__ = "0.1.0"
