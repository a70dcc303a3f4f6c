"""The report's account of the exported model on the test split: the operating point with its intervals,
the confusion matrix and PR curve, and galleries of the mistakes and borderline frames with saliency maps.
Everything comes from what `nas export` saved when it scored the test split, its one and only time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nas.errors import NasError
from nas.report.document import Block, Figure, Gallery, Heading, Para, Tile, figure_png
from nas.report.gallery import PREDICTIONS, Predictions, SavedGallery, thumbnail

TITLES = {
    "fp": ("False positives", "negative frames the model calls positive: each wastes an acquisition. Most confident first."),
    "fn": ("False negatives", "positive frames the model lets pass: each is a particle missed. Least confident first."),
    "above": ("Borderline, just above the threshold", "called positive by the smallest margin, whatever their truth."),
    "below": ("Borderline, just below the threshold", "called negative by the smallest margin, whatever their truth."),
}


def _ci(values: list[float] | None) -> str:
    return f" (95% CI {values[0]:.3f}-{values[1]:.3f})" if values else ""


def headline(card: dict[str, Any]) -> str:
    """One sentence: test precision and recall with their intervals at the exported threshold."""
    t = card["metrics"]["test"]
    return (f"test precision {t['precision']:.3f}{_ci(t.get('precision_95ci'))} at recall {t['recall']:.3f}"
            f"{_ci(t.get('recall_95ci'))}, threshold {card['threshold']:.4g} (chosen on {card.get('threshold_from', 'val')} for recall >= "
            f"{card['recall_floor']:g}), n={t['n']} test frames")


def test_blocks(card: dict[str, Any], preds: Predictions, gallery: SavedGallery) -> list[Block]:
    """Every block of the test section; the predictions must agree with the card's confusion matrix."""
    threshold = card["threshold"]
    called = preds.called(threshold)
    counts = {"tp": int(np.sum(called & (preds.labels == 1))), "fp": int(np.sum(called & (preds.labels == 0))),
              "fn": int(np.sum(~called & (preds.labels == 1))), "tn": int(np.sum(~called & (preds.labels == 0)))}
    if counts != card["metrics"]["test"]["confusion_matrix"]:
        raise NasError(f"{PREDICTIONS}: its decisions ({counts}) disagree with model_card.json's test confusion matrix "
                       f"({card['metrics']['test']['confusion_matrix']}); run 'nas export RUN' again")
    what = (f"the mean of trials {', '.join(card['ensemble'])}" if card.get("ensemble") else f"trial {card['trial_id']}")
    return [
        Heading("The exported model on the test split"),
        Para(f"Exported: {what}. **{headline(card)[0].upper() + headline(card)[1:]}.** The test split was scored "
             "once, by `nas export`; every test figure here comes from that scoring (`test_predictions.csv`)."),
        Figure("test_confusion_pr.png", _confusion_pr_png(preds, threshold, card["recall_floor"], counts),
               "confusion matrix and PR curve with the operating point (test split)"),
        Heading("Where the model fails (test split)"),
        Para("Each tile: the frame as the model sees it (normalized and resized), then the same frame under the "
             "model's evidence for **positive** (red to yellow), then under its evidence for **negative** (blue to "
             "green), both on one scale per frame; below, its probability, true class and file. Look for evidence "
             "that sits on the particle. Evidence on the frame edge, the carbon background, a speck or a scan-line "
             "artifact means the model learned a shortcut that will not hold on another chip. A false positive "
             "showing a cut, blurred or doubled particle says which kind of negative the model confuses; a false "
             "negative with no positive evidence on its particle was not seen at all. "
             f"Maps: {gallery.method}."),
        *_gallery_blocks("fp", counts["fp"], gallery, preds),
        *_gallery_blocks("fn", counts["fn"], gallery, preds),
        Heading("Borderline frames (test split)"),
        Para(f"The {gallery.borderline} frames nearest the threshold on each side: where a small change of threshold "
             "or of the model would flip the decision."),
        *_gallery_blocks("above", int(np.sum(called)), gallery, preds),
        *_gallery_blocks("below", int(np.sum(~called)), gallery, preds),
    ]


def _gallery_blocks(kind: str, total: int, gallery: SavedGallery, preds: Predictions) -> list[Block]:
    title, meaning = TITLES[kind]
    picks = gallery.picks[kind]
    if kind in ("fp", "fn"):
        note = (f"{total} {title.lower()}: {meaning}" if total else f"No {title.lower()} in the test split.")
        if total > len(picks):
            note += f" Showing the first {len(picks)} (at most {gallery.cap} are shown)."
    else:
        note = f"{meaning} Showing {len(picks)} of the {total} frames on this side."
    tiles = []
    for rank, i in enumerate(picks, start=1):
        frame, positive, negative = gallery.frame_of(int(i))
        truth = "positive" if preds.labels[i] else "negative"
        tiles.append(Tile(f"{kind}-{rank:02d}.png", thumbnail(frame, positive, negative),
                          f"p={preds.probs[i]:.3f}, {truth}, {preds.paths[i]}"))
    return [Heading(title, 3), Para(note), Gallery(kind, tiles)]


def _confusion_pr_png(preds: Predictions, threshold: float, floor: float, cm: dict[str, int]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    fig, (left, right) = plt.subplots(1, 2, figsize=(8.6, 3.8), gridspec_kw={"width_ratios": [1, 1.25]})
    grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    left.imshow(grid, cmap="Blues")
    for (i, j), v in np.ndenumerate(grid):
        name = [["TN", "FP"], ["FN", "TP"]][i][j]
        left.text(j, i, f"{name}\n{v}", ha="center", va="center", color="black" if v < grid.max() * 0.6 else "white")
    left.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["negative", "positive"], yticklabels=["negative", "positive"],
             xlabel="called", ylabel="true", title=f"Confusion at threshold {threshold:.3g} (test split)")
    if preds.labels.sum() and (1 - preds.labels).sum():
        prec, rec, _ = precision_recall_curve(preds.labels, preds.probs)
        right.plot(rec, prec, lw=1.5, label="PR curve")
    tp, fp = cm["tp"], cm["fp"]
    op_prec = tp / (tp + fp) if tp + fp else 0.0
    op_rec = tp / (tp + cm["fn"]) if tp + cm["fn"] else 0.0
    right.axvline(floor, color="gray", ls="--", lw=1, label=f"recall floor {floor:g}")
    right.plot([op_rec], [op_prec], "o", color="C3", ms=8, label=f"operating point (threshold {threshold:.3g})")
    right.set(xlabel="recall", ylabel="precision", title="PR curve (test split)", xlim=(0, 1.02), ylim=(0, 1.02))
    right.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return figure_png(fig)
