"""The named families of demo data (`nas demo-data --family NAME`): each varies what real sessions vary.

The ranges are ours, chosen to span settings a megalibrary campaign meets; they are not fitted to any
held-out data. Each family changes one aspect against `base` (or, `sessions`, all of them together), so a
recipe chosen on some families can be judged on the others (leave-one-family-out).
"""

from __future__ import annotations

from dataclasses import replace

from nas.errors import NasError
from nas.synthetic.families import Family, Span
from nas.synthetic.particles import BASE_SHAPES

_NEW = ("blobby", "core_shell", "twinned", "janus", "hollow")

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("base", "today's demo data: 8 chips that differ in detector offset, gain and noise, dose and "
               "support thickness; about 47% positive"),
        Family("magnification", "each session at its own magnification: particle diameters (and support "
               "texture) scaled 0.45-2.2x in pixels, so one session's particles span ~7-20 px of a 128 px frame "
               "and another's ~35-77 px", scale=Span(0.45, 2.2, log=True)),
        Family("low-dose", "beam-sensitive sessions: 8-60x fewer electrons per pixel than base (dose "
               "0.006-0.06), a few counts on the support, read noise no longer negligible",
               dose=Span(0.006, 0.06, log=True)),
        Family("detector", "detector set-ups: gain 0.3-12 (log), offset 0-45% of full scale, read noise "
               "2-90, scan-line noise 0-60, a 12, 14 or 16-bit ADC that saturates bright cores, a compressive "
               "response (knee 0.3-3x full scale) and afterglow trails of 0-2.5 px along the fast scan",
               gain=Span(0.3, 12, log=True), offset=Span(0.0, 0.45), offset_of_full_scale=True,
               read_noise=Span(2, 90, log=True), line_noise=Span(0, 60), bits=(12, 14, 16),
               knee=Span(0.3, 3.0, log=True), afterglow=Span(0.0, 2.5)),
        Family("drift", "unsettled stages: in-focus smear 0.5-3x base along one direction per session, scan "
               "shear of up to 0.05 px per line, line jitter 0-1.2 px and mains hum 0-1 px",
               drift_scale=Span(0.5, 3.0, log=True), drift_direction=True, shear=Span(-0.05, 0.05),
               jitter=Span(0.0, 1.2), hum=Span(0.0, 1.0)),
        Family("rare", "sparse chips: 10% of frames drawn positive on average, 3-25% between sessions",
               positive_rate=0.10, rate_spread=0.6),
        Family("margins", "another lab's labelling policy: stricter focus (blur 1.2-1.4 px) and smear "
               "(2.3-2.7 px) limits, a looser edge (5-10% of the mass may be cut), half the frames drawn "
               "close to the limits", focus_limit=Span(1.2, 1.4), drift_limit=Span(2.3, 2.7),
               cut_limit=Span(0.05, 0.10), borderline=Span(0.45, 0.6)),
        Family("shapes", "other particles: irregular blobs, core-shell and Janus bimetallics, decahedral twins "
               "and hollow nanoshells (80% of particles) besides the base shapes; each session favours a few",
               shapes=tuple((s, 0.05) for s in BASE_SHAPES) + tuple((s, 0.16) for s in _NEW), shape_mix=1.0),
        Family("supports", "other supports and dirt, one per session: holey carbon (hole edge, rim, vacuum), "
               "a crystalline support with lattice fringes, a graphene-like film with residue; specks, a "
               "scan-window carbon deposit, dense ligand residue or clean",
               supports=(("carbon", 0.1), ("holey", 0.3), ("lattice", 0.3), ("graphene", 0.3)),
               contamination=(("specks", 0.3), ("deposit", 0.25), ("residue", 0.25), ("none", 0.2))),
        Family("sessions", "ten sessions that differ in everything at once, moderately: magnification "
               "0.6-1.6x, dose 0.02-0.5, detector, drift and scan distortion, support, shapes favoured, "
               "labelling limits, and class balance (25% positive on average)",
               groups=10, positive_rate=0.25, rate_spread=0.6, scale=Span(0.6, 1.6, log=True),
               dose=Span(0.02, 0.5, log=True), gain=Span(0.5, 8, log=True), offset=Span(0.0, 0.3),
               offset_of_full_scale=True, read_noise=Span(2, 40, log=True), line_noise=Span(0, 30),
               bits=(14, 16), knee=Span(1.0, 4.0, log=True), afterglow=Span(0.0, 1.0),
               drift_scale=Span(0.6, 2.0, log=True), drift_direction=True, shear=Span(-0.02, 0.02),
               jitter=Span(0.0, 0.6), hum=Span(0.0, 0.5), shape_mix=2.0,
               supports=(("carbon", 0.6), ("holey", 0.2), ("graphene", 0.2)),
               contamination=(("specks", 0.6), ("deposit", 0.2), ("residue", 0.2)),
               focus_limit=Span(1.6, 2.0), drift_limit=Span(3.0, 4.0), cut_limit=Span(0.02, 0.04),
               borderline=Span(0.25, 0.4)),
        Family("clear", "the demo's data: base chips with a higher dose (0.3-0.8) and few frames near the "
               "labelling limits (5% instead of 30%): clear cases that a model learns in minutes, to show the "
               "workflow, not to measure models", dose=Span(0.3, 0.8), borderline=Span(0.05, 0.05)),
    )
}


def family(name: str, positive_rate: float | None = None, rate_spread: float | None = None) -> Family:
    """A named family, optionally at another positive rate or spread of it between sessions; one clear error
    for an unknown name or a bad value."""
    if name not in FAMILIES:
        raise NasError(f"--family {name}: unknown family; expected one of {', '.join(FAMILIES)}")
    fam = FAMILIES[name]
    if positive_rate is not None:
        if not 0.02 <= positive_rate <= 0.9:
            raise NasError(f"--positive-rate {positive_rate:g}: expected a share between 0.02 and 0.9")
        fam = replace(fam, positive_rate=float(positive_rate))
    if rate_spread is not None:
        if not 0.0 <= rate_spread <= 2.0:
            raise NasError(f"--rate-spread {rate_spread:g}: expected a log-normal sigma between 0 and 2")
        fam = replace(fam, rate_spread=float(rate_spread))
    return fam
