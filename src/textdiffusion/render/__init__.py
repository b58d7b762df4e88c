"""Frames as text: the filmstrip (terminal, HTML, animated GIF) and the chat reply redrawn as it denoises."""
