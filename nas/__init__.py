"""stem-nas: architecture search for HAADF-STEM nanoparticle frame triage.

The objective throughout is validation precision at a fixed recall floor; the winner is exported as a
SavedModel that takes raw frames and returns a probability and a decision at a calibrated threshold.
"""

__version__ = "0.1.0"
