"""Serve a try-on web app and an HTTP API (``idm-vton serve``); see docs/serving.md."""

from ..serving.command import HELP, add_arguments, run

__all__ = ["HELP", "add_arguments", "run"]
