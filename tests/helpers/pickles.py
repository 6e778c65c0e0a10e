"""A pickle payload that proves code ran: unpickled with plain ``pickle``, it writes a file.

A loader that refuses it leaves no ``marker`` file, and its message names the global it refused
(``..._leave_marker``).
"""

from __future__ import annotations

from pathlib import Path


def _leave_marker(path: str) -> None:
    Path(path).write_text("the pickle ran code")


class RunsCode:
    """Unpickling this object with plain ``pickle`` writes ``marker`` (the proof code ran)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_leave_marker, (self.marker,))
