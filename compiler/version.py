"""qcc's version, in a leaf module so any layer may read it without importing the `qcc` package root."""

__version__ = "0.1.0"
