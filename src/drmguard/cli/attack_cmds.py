"""Placeholder: commands are added by their issue."""


def register(app) -> None:
    return None
