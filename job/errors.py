"""The one exception type for bad input: configuration, data or checkpoint problems.

Retrying cannot fix these, so ``job.__main__.main`` turns a ``BadInput`` into a single line
``deeplab-job: error: <message>`` and exit code ``recipe.EXIT_BAD_INPUT`` (2), which the operator
treats as permanent.
"""

from __future__ import annotations


class BadInput(Exception):
    """A configuration, data or checkpoint error; ``str(exc)`` is the one-line message."""
