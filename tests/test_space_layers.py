"""Spaces whose networks have layers beyond the default conv stack (pixels folded into channels by
stem.space_to_depth; group normalization; MixStyle, a layer of our own that only acts in training) search,
export and serve raw frames: the SavedModel in a clean process, without this project, equals nas predict."""

import json
import subprocess
import sys

import pytest

from .conftest import REPO, cli, write_experiment
from .test_export import CLEAN_SERVE


@pytest.mark.parametrize("edit, layer", [
    (("stem:\n", "stem:\n  space_to_depth: 2\n"), "space_to_depth"),
    (("normalization: {choice: [batch, none]}", "normalization: group"), "group_normalization"),
    (("normalization: {choice: [batch, none]}", "normalization: batch\n  mixstyle: 0.5"), "mix_style"),
])
def test_search_export_and_serve_a_space_with(tmp_path, tiny_data, edit, layer):
    space = tmp_path / "edited.yaml"
    text = (REPO / "search_spaces" / "small_cnn.yaml").read_text()
    assert edit[0] in text
    space.write_text(text.replace(*edit, 1))
    exp = write_experiment(tmp_path / "edited.toml", tiny_data, search={"space": str(space)},
                           budget={"max_trials": 1, "epochs": 1})
    res = cli("search", exp, "--results", tmp_path / "results", "--run-id", "r1")
    assert res.code == 0, res.err
    run = tmp_path / "results" / "tiny" / "r1"
    assert cli("export", run).code == 0
    # importing nas.models also registers the project's own layers (MixStyle) for loading
    import keras

    from nas.models import all_layers

    exported = keras.saving.load_model(run / "export" / "model.keras", compile=False)
    names = [layer.name for layer in all_layers(exported)]
    assert layer in names, names
    frames = sorted((tiny_data / "positive").glob("*.tif"))[:2] + sorted((tiny_data / "negative").glob("*.tif"))[:2]
    out_csv = tmp_path / "preds.csv"
    assert cli("predict", run / "export", *frames, "--out", out_csv).code == 0
    import csv

    rows = {r["path"]: float(r["probability"]) for r in csv.DictReader(open(out_csv))}
    clean = subprocess.run([sys.executable, "-c", CLEAN_SERVE, str(run / "export" / "saved_model"), *map(str, frames)],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    served = json.loads(clean.stdout.strip().splitlines()[-1])
    assert served.keys() == rows.keys()
    for path, prob in served.items():
        assert rows[path] == pytest.approx(prob, abs=1e-5)

