"""A model file that runs code when unpickled: writes a marker file (the tests assert it never
appears)."""

import pickle

import torch


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_payload(path, marker, how: str = "pickle"):
    """Write the payload to ``path`` with plain ``pickle`` or with ``torch.save``; returns path."""
    if how == "pickle":
        path.write_bytes(pickle.dumps(Payload(str(marker))))
    else:
        torch.save(Payload(str(marker)), path)
    return path
