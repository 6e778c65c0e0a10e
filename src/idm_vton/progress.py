"""Progress bars, one rule everywhere: shown unless the caller turns them off or the command line
does. The command line shows them only when stderr is a terminal (:mod:`idm_vton.commands.main`),
so that where stderr is a log or a pipe, a one-line error stands alone."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

__all__ = ["progress_bar", "progress_bars", "progress_bars_shown"]

_shown = True


def progress_bars_shown() -> bool:
    """False while :func:`progress_bars` turns every bar off."""
    return _shown


@contextmanager
def progress_bars(show: bool) -> Iterator[None]:
    """Show (or not) every progress bar of this package while the block runs."""
    global _shown
    previous, _shown = _shown, bool(show)
    try:
        yield
    finally:
        _shown = previous


def progress_bar(iterable: Iterable | None = None, *, show: bool = True, **kwargs):
    """A ``tqdm.auto`` bar over ``iterable`` (``kwargs`` as tqdm's); off when ``show`` is False
    or :func:`progress_bars` turns bars off."""
    from tqdm.auto import tqdm

    if not (show and _shown):
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
