"""The report: what the exported model gets wrong on the test split and why (galleries of its mistakes and
borderline frames with saliency maps, confusion matrix, PR curve), and what the search found (which
hyperparameters mattered, best objective over time, Pareto fronts). Markdown with PNGs, and one
self-contained `report.html`.
"""

from nas.report.build import EXPORT_REPORT, make_report, write_export_report
from nas.report.search_section import pareto_front

__all__ = ["EXPORT_REPORT", "make_report", "pareto_front", "write_export_report"]
