"""One-line messages: what an error says, fit for a one-line report."""
from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first non-blank line of ``error``'s message, or its type's name when the message is empty (many
    errors from torch and C extensions carry pages of context, or nothing at all)."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
