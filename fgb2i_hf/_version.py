"""The package version (its one definition; ``setup.cfg`` reads it)."""

__version__ = "0.1.0"
