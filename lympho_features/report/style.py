"""The report's colours, defined once: the page (CSS variables), the figures (matplotlib) and the outlines drawn
on the cell thumbnails (OpenCV) all read them from here."""

from __future__ import annotations

#: A call, a contribution or a recorded class toward tumoral.
TUMORAL_COLOUR = "#c0392b"
#: ... toward reactive.
REACTIVE_COLOUR = "#2e6da4"
#: A patient without a recorded class.
UNKNOWN_COLOUR = "#8c8c8c"
#: Something to read with care (uncertain call, acquisition input).
WARNING_COLOUR = "#e67e22"
#: The start and end markers of a waterfall.
NEUTRAL_COLOUR = "#999"
#: Nucleus outline on the thumbnails: gold, visible on purple chromatin and pink red cells.
NUCLEUS_OUTLINE_COLOUR = "#ffd700"
#: Whole-cell outline: green, visible on pale-blue cytoplasm and the cream background.
CELL_OUTLINE_COLOUR = "#00c846"


def rgb(colour: str) -> tuple[int, int, int]:
    """``'#ffd700'`` -> ``(255, 215, 0)`` (``#rgb`` short forms too)."""
    h = colour.lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))


NUCLEUS_OUTLINE = rgb(NUCLEUS_OUTLINE_COLOUR)
CELL_OUTLINE = rgb(CELL_OUTLINE_COLOUR)

#: The CSS variables the style sheet (static/report.css) uses for these colours.
CSS_VARIABLES = {
    "--tum": TUMORAL_COLOUR,
    "--rea": REACTIVE_COLOUR,
    "--unk": UNKNOWN_COLOUR,
    "--warn": WARNING_COLOUR,
    "--neutral": NEUTRAL_COLOUR,
    "--nucleus": NUCLEUS_OUTLINE_COLOUR,
    "--cell": CELL_OUTLINE_COLOUR,
}
