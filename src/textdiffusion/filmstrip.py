"""The old import path of the filmstrip renderers (`textdiffusion.filmstrip.render_terminal`, ...), kept because the
README promised it. The module is render/filmstrip.py; new code imports it from there."""

from .render.filmstrip import *  # noqa: F403
