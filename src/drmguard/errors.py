"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class DrmguardError(Exception):
    """Bad input or an unusable configuration, explained in one line."""
