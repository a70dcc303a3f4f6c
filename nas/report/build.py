"""Writing the report: `report.md` with its PNGs and a self-contained `report.html`, into a folder built
under a temporary name and renamed into place (a failed report leaves the previous one as it was).

Two entry points: `write_export_report`, which `nas export` calls once while its test predictions are in
hand, and `make_report` (`nas report RUN`), which redraws the same report from the files export saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nas.config import load_experiment
from nas.errors import NasError
from nas.report.document import Block, Para, to_html, to_markdown
from nas.report.gallery import (
    BORDERLINE,
    GALLERY_MAX,
    KINDS,
    load_gallery,
    read_predictions,
    save_gallery,
    select,
    write_predictions,
)
from nas.report.search_section import search_blocks
from nas.report.test_section import test_blocks
from nas.runlog import RunDir, atomic_folder

EXPORT_REPORT = "report"  # the report's folder inside an export
CARD = "model_card.json"


def write_export_report(folder: str | Path, model, frames, rows, labels, probs, threshold: float, paths: list[str], *,
                        run: str | Path) -> Path:
    """Save the test split's predictions and gallery (frames with saliency) into the export `folder`, then
    write `folder/report/`. Called by `nas export` after it wrote model_card.json into `folder`.

    frames: the cache's frames, indexable by an array of rows (a FrameStore or an array); rows: the test
    frames' rows in it; labels, probs, paths: per test frame, in the same order. Only the frames the
    gallery shows are read. Returns report.html.
    """
    from nas.report.saliency import saliency_maps

    folder = Path(folder)
    labels, probs, rows = np.asarray(labels).astype(int).ravel(), np.asarray(probs, np.float64).ravel(), np.asarray(rows)
    if not len(labels) == len(probs) == len(rows) == len(paths):
        raise ValueError(f"test arrays differ in length: {len(labels)} labels, {len(probs)} probabilities, "
                         f"{len(rows)} rows, {len(paths)} paths")
    write_predictions(folder, list(paths), labels, probs, threshold)
    picks = select(labels, probs, threshold, GALLERY_MAX, BORDERLINE)
    shown = np.unique(np.concatenate([picks[k] for k in KINDS])).astype(np.int64)
    chosen = np.asarray(frames[rows[shown]], dtype=np.float32)
    positive, negative, method = saliency_maps(model, chosen)
    save_gallery(folder, picks, chosen, positive, negative, method, GALLERY_MAX, BORDERLINE)
    return _write(RunDir(Path(run)), folder, folder / EXPORT_REPORT, top=5)


def make_report(run_path: str | Path, out: str | Path | None = None, top: int = 5, export: str | Path | None = None) -> Path:
    """`nas report RUN`: RUN/report/ (or `out`) from the run's trial log and, when the run has an export
    (RUN/export, or `export`), the test predictions and gallery export saved. Returns report.html."""
    run = RunDir(Path(run_path)).check_exists()
    if export is not None:
        export = Path(export)
        if not (export / CARD).is_file():
            raise NasError(f"{export}: not an export folder (expected {CARD}); make one with 'nas export {run.path}'")
    elif (run.export / CARD).is_file():
        export = run.export
    return _write(run, export, Path(out) if out else run.path / "report", top)


def _settings(run: RunDir, card: dict | None) -> tuple[float, str]:
    """The recall floor and the positive class's name, from the export's card or the run's frozen config."""
    exp = load_experiment(run.experiment, resolve_paths=False)
    floor = card["recall_floor"] if card else exp.objective.recall_floor
    return float(floor), exp.data.positive


def _blocks(run: RunDir, export: Path | None, top: int) -> tuple[str, list[Block]]:
    card = json.loads((export / CARD).read_text()) if export else None
    floor, positive = _settings(run, card)
    intro = Para("Every figure names its split. **test** figures come from the single scoring of the test split by "
                 "`nas export` (saved as `test_predictions.csv` and `gallery.npz` in the export); **val** (or **oof**, "
                 "out-of-fold under cross-validation) figures come from the search, which never saw the test split.")
    if export is None:
        tested: list[Block] = [Para(f"No export yet, so no test figures: `nas export {run.path}` scores the test split "
                                    "once and adds the model's mistakes to this report.")]
    else:
        preds = read_predictions(export)
        tested = test_blocks(card, preds, load_gallery(export, preds, card["threshold"]))
    title = f"Report: {run.path.parent.name} / {run.run_id}"
    return title, [intro, *tested, *search_blocks(run, floor, positive, top)]


def _write(run: RunDir, export: Path | None, final: Path, top: int) -> Path:
    title, blocks = _blocks(run, export, top)
    markdown, files = to_markdown(title, blocks)
    page = to_html(title, blocks)
    with atomic_folder(final) as tmp:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        (tmp / "report.md").write_text(markdown)
        (tmp / "report.html").write_text(page)
    return final / "report.html"
