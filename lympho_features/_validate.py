"""Checks of settings values, run where each settings class is defined (its ``__post_init__``).

A bad value raises :class:`~lympho_features.errors.SettingsError` naming the
class, the setting and what it must be, e.g. ``SegmentationSettings.central_fraction
= 1.5: must be a number in (0, 1]``: the run stops before any image is read,
rather than producing empty masks or NaN features for every crop.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from .errors import SettingsError


class SettingsCheck:
    """Checks the fields of one settings object; each method raises :class:`SettingsError` on a bad value.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Window:
    ...     fraction: float = 0.5
    ...     def __post_init__(self):
    ...         SettingsCheck(self).number("fraction", 0, 1, low_open=True)
    >>> Window(0.7).fraction
    0.7
    >>> Window(0)
    Traceback (most recent call last):
    ...
    lympho_features.errors.SettingsError: Window.fraction = 0: must be a number in (0, 1]
    """

    def __init__(self, settings) -> None:
        self.settings = settings
        self.owner = type(settings).__name__

    def fail(self, name: str, must: str) -> None:
        """Raise :class:`SettingsError` for field ``name``, whose value ``must`` be something else."""
        raise SettingsError(f"{self.owner}.{name} = {getattr(self.settings, name)!r}: must be {must}")

    def integer(self, name: str, low: int | None = None, high: int | None = None) -> None:
        """Field ``name`` is a whole number (not a bool) in ``[low, high]``."""
        value = getattr(self.settings, name)
        if isinstance(value, bool) or not isinstance(value, Integral) or not _within(value, low, high):
            self.fail(name, f"a whole number{_range_words(low, high)}")

    def number(
        self,
        name: str,
        low: float | None = None,
        high: float | None = None,
        *,
        low_open: bool = False,
        optional: bool = False,
    ) -> None:
        """Field ``name`` is a real number (not NaN, not a bool) in ``[low, high]`` (``(low, high]`` with ``low_open``).

        ``optional``: None is accepted too (the setting is then switched off).
        Infinity is accepted where the range allows it (a margin of ``inf``
        switches a test off).
        """
        value = getattr(self.settings, name)
        if optional and value is None:
            return
        ok = isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)
        if not ok or not _within(value, low, high) or (low_open and value == low):
            self.fail(name, f"a number{_range_words(low, high, low_open)}{' or None' if optional else ''}")

    def numbers(self, name: str, low: float, high: float, *, whole: bool = False, non_empty: bool = True) -> None:
        """Field ``name`` is a sequence of numbers (whole numbers with ``whole``), each in ``[low, high]``."""
        values = getattr(self.settings, name)
        kind = "whole numbers" if whole else "numbers"
        must = f"a {'non-empty ' if non_empty else ''}sequence of {kind}{_range_words(low, high)}"
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            self.fail(name, must)
        items = list(values)
        wanted = Integral if whole else Real
        bad = [v for v in items if isinstance(v, bool) or not isinstance(v, wanted) or not _within(v, low, high)]
        if bad or (non_empty and not items) or any(v != v for v in items):
            self.fail(name, must)

    def instance(self, name: str, kind: type) -> None:
        """Field ``name`` is an instance of ``kind``."""
        if not isinstance(getattr(self.settings, name), kind):
            self.fail(name, f"a {kind.__name__}")


def _within(value, low, high) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _range_words(low, high, low_open: bool = False) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}]"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" <= {high}"
    return ""
