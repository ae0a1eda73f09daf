"""drmguard: find and remove backdoors in deep regression models."""

__version__ = "0.1.0"
