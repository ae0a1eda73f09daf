"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class DrmguardError(Exception):
    """Bad input or an unusable configuration, explained in one line."""


class MissingInputSize(DrmguardError):
    """A model file that does not record its input size, and no size was given."""


def first_line(e: object) -> str:
    """The first line of an exception's text (its type name when the text is empty)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
