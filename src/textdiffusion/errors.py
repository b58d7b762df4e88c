"""Errors that mean "the user asked for something we cannot do", as opposed to bugs."""


class UserError(Exception):
    """A mistake in the user's input. The CLI prints its message on one line and exits with 2."""
