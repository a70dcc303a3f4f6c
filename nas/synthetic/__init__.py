"""A HAADF-STEM megalibrary simulator: the built-in demo data, in named families of sessions.

A frame is positive when it shows exactly one whole, in-focus, unsmeared particle. Negatives are empty
fields, several particles, aggregates, particles cut by the frame edge, defocused or drift-smeared frames.
Labels follow from what was rendered (mass outside the frame, blur and smear against stated limits), and a
share of frames is drawn close to those limits so the task is not trivially separable.

  particles.py   shapes, compositions, projected thickness and Z-contrast
  scene.py       supports and contamination
  instrument.py  probe and drift blur, scan distortion, shot noise, detector
  families.py    what a family varies, and the sessions drawn from it
  catalog.py     the named families
  render.py      one frame and its label
  dataset.py     a data set on disk (frames + labels.csv)
"""

from nas.synthetic.catalog import FAMILIES, family
from nas.synthetic.dataset import CSV_FIELDS, FAMILY_FIELDS, generate, generate_pool
from nas.synthetic.families import (
    KINDS,
    MAX_CUT_FRACTION,
    MAX_DRIFT,
    MAX_FOCUS_SIGMA,
    Family,
    Session,
    Span,
    draw_sessions,
)
from nas.synthetic.particles import ELEMENTS, Particle
from nas.synthetic.render import label, render_frame

__all__ = [
    "CSV_FIELDS", "ELEMENTS", "FAMILIES", "FAMILY_FIELDS", "KINDS", "MAX_CUT_FRACTION", "MAX_DRIFT", "MAX_FOCUS_SIGMA",
    "Family", "Particle", "Session", "Span", "draw_sessions", "family", "generate", "generate_pool", "label", "render_frame",
]
