"""Errors that mean "the user asked for something we cannot do", as opposed to bugs."""


class UserError(ValueError):
    """A mistake in the user's input. The CLI prints its message on one line and exits with 2.

    A ValueError, so that code catching the usual "bad argument" exception catches it too."""


class InputWarning(UserWarning):
    """Input we go on with but doubt (a model folder whose weights only hint that its config.json is another's).
    The CLI prints its message on one line, as "textdiffusion: warning: ..."."""
