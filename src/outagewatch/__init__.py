"""outagewatch: synthetic monitoring of mail platforms with agreement-grade outage detection."""

__version__ = "0.1.0"

__all__ = ["__version__"]
