"""The package version, in one place (the package, provenance records and `repfusion --version`)."""

__version__ = "0.1.0"
