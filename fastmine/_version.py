"""The one place the version is written: setuptools reads it into the package metadata
(pyproject.toml's dynamic version), ``fastmine.__version__`` re-exports it."""

__version__ = "0.1.0"
