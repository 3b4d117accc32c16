"""The errors the training pipeline raises on purpose."""

from __future__ import annotations


class SetupError(Exception):
    """Bad input from the user: a model or data spec, a flag, a shape that does not fit.

    The message names what was wrong and what was expected; the CLI prints it and exits 2.
    """


class InvalidRun(Exception):
    """The pipeline could not measure (not the model's fault): the CLI exits 4."""
