"""Errors raised on bad user input.

One exception type so that workflow scripts can tell a user's mistake (report it plainly)
from a bug (show the traceback).
"""


class InputError(ValueError):
    """Bad input named by dataset and file: the message is meant for the user as it is."""

    def __init__(self, message: str, *, dataset: str | None = None, path: object | None = None):
        parts = []
        if dataset:
            parts.append(f"dataset '{dataset}'")
        if path is not None:
            parts.append(f"file '{path}'")
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.dataset = dataset
        self.path = path
