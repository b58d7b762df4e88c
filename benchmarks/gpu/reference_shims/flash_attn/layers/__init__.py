from . import rotary  # noqa: F401
