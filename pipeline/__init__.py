"""Pure, importable building blocks of the MER dual-phase dynamic-image pipeline."""

__version__ = "0.1.0"
