"""`python -m edgepack` runs the command line."""

from .cli import run

run()
