"""What a trial spends besides learning: every training step in one shape (a new shape is a new trace of the
step, 0.85 s on the overhead benchmark's tiny model), validation in the shape of every other prediction, and
models trained one after another leaving no graphs behind in the process."""

import gc

import keras
import numpy as np
import pytest

from nas import data as data_mod
from nas import training
from nas.models import build_model, fresh_session
from nas.runlog import read_trials
from nas.space import parse_space

from .conftest import cli, write_experiment

SMALL = """
blocks: {type: conv, count: 2, filters: 8, growth: 1.5, kernel_size: 3, normalization: batch, pooling: max, dropout: 0.0}
head: {pooling: avg, dense: 0, dropout: 0.0}
optimizer: {name: adam, learning_rate: 0.003}
"""


def small_model(size: int = 32) -> keras.Model:
    values = {k: d.constant for k, d in parse_space(SMALL).dimensions.items()}
    return build_model(values, size, 0.9, 10)


@pytest.mark.parametrize("n, batch", [(42, 16), (48, 16), (10, 16)])
def test_training_batches_are_full_and_cover_every_frame(n, batch):
    frames = np.broadcast_to(np.arange(60, dtype=np.float32)[:, None, None], (60, 8, 8))  # each frame holds its row
    labels, rows = np.arange(60) % 2, np.arange(5, 5 + n)
    for epoch in range(3):
        batches = list(data_mod.epoch_batches(frames, labels, rows, batch, epoch=epoch, shuffle=True, seed=1, full=True))
        sizes = {len(y) for _, y in batches}
        assert sizes == ({n} if n < batch else {batch}), sizes
        ids = np.concatenate([x[:, 0, 0, 0] for x, _ in batches]).astype(int)
        assert set(ids) == set(rows)  # every frame, every epoch
        assert len(ids) == (n if n < batch else -(-n // batch) * batch)  # the top-up repeats only what is missing


def test_a_search_trains_in_one_shape_and_predicts_in_one(tmp_path, tiny_data, monkeypatch):
    shapes: dict[str, list[tuple]] = {"train": [], "predict": []}
    real_train, real_predict = keras.Model.train_on_batch, keras.Model.predict_on_batch
    monkeypatch.setattr(keras.Model, "train_on_batch",
                        lambda self, x, *a, **k: shapes["train"].append(x.shape) or real_train(self, x, *a, **k))
    monkeypatch.setattr(keras.Model, "predict_on_batch",
                        lambda self, x, *a, **k: shapes["predict"].append(x.shape) or real_predict(self, x, *a, **k))
    monkeypatch.setattr(training, "PREDICT_BATCH", 8)  # tiny data's 9-odd val frames span two chunks
    exp = write_experiment(tmp_path / "e.toml", tiny_data, budget={"max_trials": 1, "epochs": 2})
    assert cli("search", exp, "--results", tmp_path / "res", "--run-id", "r").code == 0
    rec = read_trials(tmp_path / "res" / "tiny" / "r" / "trials.jsonl")["0"]
    assert rec.status.value == "finished" and rec.epochs_run == 2
    assert len(set(shapes["train"])) == 1 and shapes["train"][0][0] == 16, shapes["train"]
    predicted = {s for s in shapes["predict"] if s[1] == 32}  # latency's batch-1 calls are its own
    assert {s[0] for s in predicted} == {8}, shapes["predict"]


def test_validation_logs_are_those_of_keras_evaluate():
    rng = np.random.default_rng(0)
    frames = rng.random((40, 32, 32), np.float32)
    labels = (rng.random(40) < 0.5).astype(np.float32)
    train_rows, val_rows = np.arange(20), np.arange(20, 40)
    model = small_model()
    logs: list[dict] = []
    capture = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, epoch_logs: logs.append(dict(epoch_logs)))
    training.fit_epochs(model, lambda e: data_mod.epoch_batches(frames, labels, train_rows, 8, epoch=e, shuffle=True, full=True),
                        training.ValFrames(frames, val_rows, labels[val_rows]), epochs=1, callbacks=[capture])
    want = model.evaluate(frames[val_rows][..., None], labels[val_rows][:, None], batch_size=20, verbose=0, return_dict=True)
    for key, value in want.items():
        assert logs[-1][f"val_{key}"] == pytest.approx(value, abs=1e-5), key


def test_models_trained_one_after_another_leave_no_graphs_behind():
    """Each traced training step registers an all-reduce gradient in TensorFlow's global registry that holds
    its whole graph (tensorflow#97697); fresh_session drops them, so a long search holds no dead graphs."""
    from tensorflow.python.framework import ops
    from tensorflow.python.framework.func_graph import FuncGraph

    x, y = np.zeros((8, 32, 32, 1), np.float32), np.ones((8, 1), np.float32)
    for _ in range(2):
        fresh_session()
        model = small_model()
        model.train_on_batch(x, y)
        assert any(str(k).startswith("CustomGradient-") for k in ops._gradient_registry._registry)  # the leak's anchor
        del model
    fresh_session()
    assert not [k for k in ops._gradient_registry._registry if str(k).startswith("CustomGradient-")]
    gc.collect()
    assert [g.name for g in gc.get_objects() if isinstance(g, FuncGraph)] == []
