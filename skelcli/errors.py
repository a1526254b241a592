"""User-facing errors: the CLI turns these into a one-line message and a non-zero exit."""


class SkelError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""
