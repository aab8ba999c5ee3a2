"""Errors in the user's data (no TensorFlow import): `main.py` prints their one-line message, no traceback."""


class DataError(ValueError):
    """Data that cannot be used (an unreadable or wrongly sized image, a class with too few images); the
    message names the file or folder and the fix."""
