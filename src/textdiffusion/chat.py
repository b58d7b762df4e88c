"""The old import path of the chat templates (`from textdiffusion.chat import apply_chat_template`), kept because
the docs promised it. The module is api/chat.py; new code imports it from there."""

from .api.chat import *  # noqa: F403
