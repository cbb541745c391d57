"""SealedML: confidential machine learning as a service."""

__version__ = "0.1.0"

__all__ = ["__version__"]
