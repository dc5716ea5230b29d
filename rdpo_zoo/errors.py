"""The one user-error type: bad input that the user can fix, as opposed to a bug.

Code anywhere (engine, parts, plugins) raises :class:`UserInputError` (or a subclass, such as
``rdpo_zoo.parts.OptionError`` or ``rdpo_zoo.registry.UnknownPartError``) for input the user gave: an option's
value, a file's contents, a device that is not there. The message names the option or file and what was expected.
The CLI prints such an error as one line (``Error: …``) and exits with status 2; every other exception keeps its
traceback (``rdpo-zoo --debug`` shows one for user errors too). It is a ``ValueError`` so that callers that caught
``ValueError`` before still do.
"""

from __future__ import annotations

__all__ = ["UserInputError"]


class UserInputError(ValueError):
    """Bad input the user can fix; the message names the option or file and what was expected."""
