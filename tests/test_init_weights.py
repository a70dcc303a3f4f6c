"""training.init_weights through `nas search`: a trial whose network has the weights' layers starts from them
(and its record says so), another network starts from random weights, and a bad file is one clear line."""

import csv
import hashlib
import io
import json

import h5py
import keras
import numpy as np

from nas.runlog import read_trials
from nas.search.fold import network_only

from .conftest import cli, write_experiment

SPACE = """name: init
description: two plain networks that differ only in width
blocks:
  type: conv
  count: 2
  filters: {choice: [8, 16]}
  growth: 1.0
  normalization: batch
head:
  pooling: avg
  dense: 0
  dropout: 0.0
optimizer:
  name: adam
  learning_rate: %s
warm_start:
  - {blocks.filters: 8}
  - {blocks.filters: 16}
"""


def kernels(path):
    """Every convolution kernel and dense matrix in a .weights.h5, in file order (batch-norm statistics left out:
    they move in training whatever the learning rate)."""
    found = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.append(np.asarray(obj)) if isinstance(obj, h5py.Dataset)
                     and ("conv2d" in name or "dense" in name) and obj.ndim >= 2 else None)
    return found


def search(tmp_path, tiny_data, name, lr, trials, *sets):
    space = tmp_path / f"{name}.yaml"
    space.write_text(SPACE % lr)
    exp = write_experiment(tmp_path / f"{name}.toml", tiny_data, search={"space": str(space)},
                           budget={"max_trials": trials, "epochs": 2})
    r = cli("search", exp, "--results", tmp_path / "results", "--run-id", name, *sets)
    assert r.code == 0, r.err
    return tmp_path / "results" / "tiny" / name


def test_a_matching_network_starts_from_init_weights_and_says_so(tmp_path, tiny_data):
    first = search(tmp_path, tiny_data, "first", "1.0e-2", 1)
    trained = first / "trials" / "0" / "best.weights.h5"
    weights = tmp_path / "start.weights.h5"
    network_only(trained, weights)  # as `make pretrained` ships them: without the optimizer's state
    with h5py.File(trained) as f, h5py.File(weights) as g:
        assert "optimizer" in f and "optimizer" not in g and set(g) == set(f) - {"optimizer"}
    # a learning rate of 1e-6 moves no weight by more than ~1e-5 in these few steps: what is left is the start
    second = search(tmp_path, tiny_data, "second", "1.0e-6", 2, "--set", f"training.init_weights={weights}")
    trials = read_trials(second / "trials.jsonl")
    assert trials["0"].from_init and not trials["1"].from_init  # 8 filters match; 16 do not
    started, fresh = (kernels(second / "trials" / t / "best.weights.h5") for t in ("0", "1"))
    for got, want in zip(started, kernels(weights), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert fresh[0].shape != kernels(weights)[0].shape
    board = cli("leaderboard", second, "--format", "csv")
    assert sorted(r["from_init"] for r in csv.DictReader(io.StringIO(board.out))) == ["False", "True"]
    # the card names the file; a refit on train+val starts from it as the trial did
    exported = cli("export", second, "--trial", "0", "--refit")
    assert exported.code == 0, exported.err
    card = json.loads((second / "export" / "model_card.json").read_text())
    assert card["initial_weights"] == {"path": str(weights), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert "Started from weights learnt before this data" in (second / "export" / "MODEL_CARD.md").read_text()
    refit = keras.saving.load_model(second / "export" / "model.keras", compile=False)
    conv = next(w for w in refit.weights if w.path.endswith("kernel") and len(w.shape) == 4)
    np.testing.assert_allclose(np.asarray(conv), kernels(weights)[0], atol=1e-4)
    # without init_weights the same seeded trial starts elsewhere: the test above could have failed
    third = search(tmp_path, tiny_data, "third", "1.0e-6", 1)
    assert not read_trials(third / "trials.jsonl")["0"].from_init
    assert np.abs(kernels(third / "trials" / "0" / "best.weights.h5")[0] - kernels(weights)[0]).max() > 1e-2


def test_init_weights_that_are_not_a_weights_file_are_one_line(tmp_path, tiny_data):
    exp = write_experiment(tmp_path / "e.toml", tiny_data)
    for value, expected in (("missing.weights.h5", "file not found"), ("model.keras", "ending in .weights.h5")):
        r = cli("search", exp, "--results", tmp_path / "results", "--set", f"training.init_weights={value}")
        assert r.code == 2 and "training.init_weights" in r.err and expected in r.err, r.err
        assert len(r.err.strip().splitlines()) == 1


def test_the_recommended_experiment_ships_weights_that_its_residual_warm_start_learnt(tmp_path):
    """experiments/haadf.toml names nas/pretrained/haadf-residual48.weights.npz: the file is in the checkout (and
    the package), loads into the space's residual warm start at either searched size and not into the plain
    one, and what it holds is a trained network: it already sorts frames of sessions it never saw."""
    from pathlib import Path

    from sklearn.metrics import average_precision_score

    from nas.config import load_experiment
    from nas.frames import read_frame
    from nas.models import build_model
    from nas.preprocess import normalize_np
    from nas.search.fold import load_initial
    from nas.search.lifecycle import require_init_weights
    from nas.space import load_space, trial_values
    from nas.synthetic import generate

    from .conftest import REPO

    exp = load_experiment(REPO / "experiments" / "haadf.toml", base=REPO)
    require_init_weights(exp)
    weights = Path(exp.training.init_weights)
    assert weights == REPO / "nas" / "pretrained" / "haadf-residual48.weights.npz"
    space = load_space(exp.search.space)
    residual, plain = (trial_values(space, start) for start in space.warm_start)
    assert residual["training.epochs"] == 20 and plain["blocks.type"] == "conv"
    assert not load_initial(build_model(plain, 64, 0.9), weights)
    assert load_initial(build_model(residual, 64, 0.9), weights)
    model = build_model(residual, 48, 0.9)
    assert load_initial(model, weights)
    # 64 frames of 4 base sessions whose seed no pretraining used (301-303 did), prepared as a trial's frames
    data = tmp_path / "new"
    rows = list(csv.DictReader(open(generate(data, n=64, size=128, seed=11, groups=4))))
    x = np.stack([normalize_np(read_frame(data / r["path"]), 48, tuple(exp.data.clip_percentiles)) for r in rows])
    y = np.array([r["label"] == "positive" for r in rows], dtype=int)
    prob = model.predict(x[..., None], verbose=0).ravel()
    assert average_precision_score(y, prob) > 0.8, (average_precision_score(y, prob), y.mean())  # random weights: ~the base rate


def test_make_pretrained_ships_a_trials_network_as_arrays_that_load_where_the_h5_did(tmp_path, tiny_data):
    """ship_weights (the last step of `make pretrained`): a finished one-trial run of a fixed space becomes a
    .weights.npz of its network's arrays that loads into the same network at another size, and into no other;
    a run without the trial's weights is refused in one line."""
    import shutil

    import pytest

    from nas.errors import NasError
    from nas.models import build_model
    from nas.search.fold import load_initial, ship_weights
    from nas.space import load_space, trial_values

    fixed, wide = tmp_path / "fixed.yaml", tmp_path / "wide.yaml"
    fixed.write_text((SPACE % "1.0e-2").replace("{choice: [8, 16]}", "8").split("warm_start:")[0])
    wide.write_text((SPACE % "1.0e-2").replace("{choice: [8, 16]}", "16").split("warm_start:")[0])
    exp = write_experiment(tmp_path / "fixed.toml", tiny_data, search={"space": str(fixed)},
                           budget={"max_trials": 1, "epochs": 1})
    assert cli("search", exp, "--results", tmp_path / "results", "--run-id", "pre").code == 0
    run = tmp_path / "results" / "tiny" / "pre"
    ship_weights(run, tmp_path / "shipped.weights.npz")
    trained = build_model(trial_values(load_space(fixed), {}), 32, 0.9)
    assert load_initial(trained, run / "trials" / "0" / "best.weights.h5")
    again = build_model(trial_values(load_space(fixed), {}), 48, 0.9)
    assert load_initial(again, tmp_path / "shipped.weights.npz")
    for got, want in zip(again.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert not load_initial(build_model(trial_values(load_space(wide), {}), 32, 0.9), tmp_path / "shipped.weights.npz")
    shutil.rmtree(run / "trials" / "0")
    with pytest.raises(NasError, match="no weights of the network of"):
        ship_weights(run, tmp_path / "other.weights.npz")
