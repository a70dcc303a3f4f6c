"""Cost-aware proposals (`search.cost_aware`): the arithmetic a proposal is priced by, the cost model fitted
to a run's timed trials, the Gaussian process's choice per predicted second (and per cooled second,
`search.cost_cooling`), the deadline no proposal may overrun, and `nas search` end to end."""

import keras_tuner
import numpy as np
import pytest

from nas.runlog import read_events, read_trials
from nas.search import costs
from nas.search.oracles import Cooling, CostContext, cost_aware, expected_improvement, stop_reason
from nas.space import load_space, parse_space, trial_values
from nas.trial import FoldResult, TrialRecord, TrialStatus

from .conftest import REPO, cli, write_experiment


def counted_macs(model) -> int:
    """Multiply-adds read off the built layers' shapes."""
    import keras

    from nas.models import all_layers

    total = 0
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.SeparableConv2D):
            (_, h, w, _), cin = layer.output.shape, layer.input.shape[-1]
            total += h * w * (int(np.prod(layer.kernel_size)) * cin + cin * layer.filters)
        elif isinstance(layer, keras.layers.Conv2D):
            (_, h, w, _), cin = layer.output.shape, layer.input.shape[-1]
            total += h * w * int(np.prod(layer.kernel_size)) * cin * layer.filters
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return total


HAADF = load_space(REPO / "search_spaces" / "haadf.yaml")
WARM = trial_values(HAADF, {**HAADF.warm_start[1]})


@pytest.mark.parametrize("change", [
    {},
    {"blocks.type": "residual", "input.image_size": 48},
    {"blocks.type": "residual", "blocks.count": 5, "blocks.growth": 1.5, "blocks.filters": 12, "head.dense": 32},
    {"blocks.type": "separable", "blocks.pooling": "none", "blocks.count": 3},
    {"stem.filters": 8, "stem.kernel_size": 5, "stem.strides": 2, "head.pooling": "flatten"},
    {"stem.space_to_depth": 2, "blocks.count": 5, "blocks.pooling": "avg"},
    {"blocks.count": 7, "input.image_size": 32},  # pooling stops below 4 px
])
def test_network_macs_counts_what_the_built_network_computes(change):
    from nas.models import build_network, network_macs

    values = {**WARM, **change}
    size = values["input.image_size"]
    assert network_macs(values, size) == counted_macs(build_network(values, size))


@pytest.mark.parametrize("kind", ["conv", "residual", "separable"])
def test_channels_counted_in_blocks_are_those_of_the_network_rounded_up(kind):
    from nas.models import network_macs

    odd = {**WARM, "blocks.type": kind, "blocks.filters": 12, "blocks.growth": 1.0, "stem.filters": 12}
    even = {**odd, "blocks.filters": 16, "stem.filters": 16}
    assert network_macs(odd, 48, channel_block=16) == network_macs(even, 48)
    assert network_macs(odd, 48) < network_macs(even, 48)
    assert network_macs(even, 48, channel_block=16) == network_macs(even, 48)  # already whole blocks
    # a shortcut projects where the built channels change (12 -> 16), though both count as one block of 16
    projected = {**even, "stem.filters": 12}
    if kind == "residual":
        assert network_macs(projected, 48, channel_block=16) > network_macs(even, 48)
    else:
        assert network_macs(projected, 48, channel_block=16) == network_macs(even, 48)


def work(size, kind="conv"):
    return costs.work(HAADF, {**HAADF.warm_start[1], "input.image_size": size, "blocks.type": kind}, 64)


def timed_record(tid, size, kind, seconds, epochs=2, folds=3):
    return TrialRecord(trial_id=tid, status=TrialStatus.FINISHED, objective=0.5, seconds=seconds,
                       hyperparameters={**HAADF.warm_start[1], "input.image_size": size, "blocks.type": kind},
                       folds=tuple(FoldResult(fold=k, objective=0.5, epochs_run=epochs) for k in range(folds)))


def test_the_cost_model_is_the_prior_until_trials_are_timed_then_fitted_to_them():
    a, b = 2e-8, 0.3e-8  # seconds an epoch per multiply-add and per unit of fixed work: another machine than the prior's
    truth = {(s, k): a * work(s, k).macs + b * costs.fixed(work(s, k)) for s in (48, 64) for k in ("conv", "residual")}
    none = costs.fit([])
    assert none.per_mac is None and none.seconds_per_epoch(work(64)) is None
    # the prior against this machine's recipe timings, relative to the plain 64 px network (costs' docstring)
    relative = {key: none.relative(work(*key)) / none.relative(work(64)) for key in truth}
    assert relative[64, "residual"] == pytest.approx(2.50, rel=0.1)
    assert relative[48, "residual"] == pytest.approx(1.45, rel=0.1)  # measured 1.39-1.52
    assert relative[48, "conv"] == pytest.approx(0.6, rel=0.15)

    records = [timed_record("000", 64, "conv", truth[64, "conv"] * 6)]
    one = costs.fit(costs.timed(records, HAADF, 64))
    assert one.fixed_weight == 1.0  # one timing: the prior's balance, the run's own scale
    assert one.seconds_per_epoch(work(64)) == pytest.approx(truth[64, "conv"])
    records.append(timed_record("001", 48, "residual", truth[48, "residual"] * 6))
    assert costs.fit(costs.timed(records, HAADF, 64)).fixed_weight == 1.0  # two could fit timing noise: still the prior

    records.append(timed_record("002", 64, "residual", truth[64, "residual"] * 6))
    fitted = costs.fit(costs.timed(records, HAADF, 64))
    for key, seconds in truth.items():
        assert fitted.seconds_per_epoch(work(*key)) == pytest.approx(seconds, rel=1e-6)
    assert fitted.fixed_weight == pytest.approx(b / a)
    alike = [timed_record(f"00{i}", 64, "conv", truth[64, "conv"] * (6 + i)) for i in range(3)]
    assert costs.fit(costs.timed(alike, HAADF, 64)).fixed_weight == 1.0  # no spread: nothing to fit the balance on
    unusable = [timed_record("002", 64, "conv", 0.0), timed_record("003", 64, "conv", 9.0, epochs=0),
                timed_record("004", 64, "conv", 9.0).replace(status=TrialStatus.FAILED)]
    assert costs.timed(unusable, HAADF, 64) == []


def test_expected_improvement_is_the_closed_form_mean_of_the_gain():
    rng = np.random.default_rng(0)
    for mu, sd in ((0.0, 1.0), (0.4, 0.2), (-0.3, 0.05)):
        draws = rng.normal(mu, sd, 400_000)
        assert expected_improvement(np.array([mu]), np.array([sd]), 0.1)[0] == pytest.approx(
            np.maximum(0.1 - draws, 0).mean(), abs=3e-3)


SPACE_TEXT = """
name: priced
input:
  image_size: {choice: [32, 64]}
stem:
  filters: 0
blocks:
  type: {choice: [conv, residual]}
  count: 3
  filters: {choice: [8, 16]}
  growth: 2.0
  kernel_size: 3
  normalization: batch
  activation: relu
  pooling: max
  dropout: 0.0
head:
  pooling: avg
  dense: 0
  dropout: 0.0
optimizer:
  name: adam
  learning_rate: {float: [1.0e-3, 1.0e-2], sampling: log}
"""
SPACE = parse_space(SPACE_TEXT, "priced.yaml")


class Run:
    """A Bayesian oracle over SPACE with trials finished by hand, and the log records cost_aware reads."""

    def __init__(self, tmp_path, deadline=None, initial=2, space=None, max_trials=50, cooling=None):
        from nas.search.oracles import OBJECTIVE

        self.oracle = keras_tuner.oracles.BayesianOptimizationOracle(objective=OBJECTIVE, max_trials=max_trials,
                                                                     num_initial_points=initial, seed=3)
        self.oracle._set_project_dir(str(tmp_path), "search")
        self.oracle.verbose = 0
        self.space = space or SPACE
        hp = keras_tuner.HyperParameters()
        self.space.resolve(hp)  # what the tuner's first build declares
        self.oracle.hyperparameters = hp
        self.records, self.events = {}, []
        self.ctx = CostContext(trials=lambda: dict(self.records), emit=lambda kind, **f: self.events.append((kind, f)),
                               deadline=deadline, epochs=10, folds=3, image_size=32)
        cost_aware(self.oracle, self.space, self.ctx, cooling)

    def end(self, trial, score):
        self.oracle.update_trial(trial.trial_id, {"score": score})
        trial.status = "COMPLETED"
        self.oracle.end_trial(trial)

    def propose(self):
        trial = self.oracle.create_trial("tuner0")
        kind, fields = self.events[-1] if self.events else (None, {})
        return trial, (fields if kind == "trial_proposed" and fields["trial_id"] == trial.trial_id else None)

    def finish(self, values, score, seconds_per_epoch):
        trial = self.oracle.create_trial("tuner0")
        trial.hyperparameters.values.update(values)
        self.end(trial, score)
        self.records[trial.trial_id] = TrialRecord(
            trial_id=trial.trial_id, status=TrialStatus.FINISHED, objective=score, seconds=seconds_per_epoch * 30,
            hyperparameters=dict(trial.hyperparameters.values),
            folds=tuple(FoldResult(fold=k, objective=score, epochs_run=10) for k in range(3)))


def test_the_gaussian_process_proposes_by_expected_improvement_per_second(tmp_path):
    run = Run(tmp_path)
    cheap = {"input.image_size": 32, "blocks.type": "conv", "blocks.filters": 8, "optimizer.learning_rate": 3e-3}
    dear = {"input.image_size": 64, "blocks.type": "residual", "blocks.filters": 16, "optimizer.learning_rate": 3e-3}
    model = costs.CostModel(1.0)
    ratio = model.relative(costs.work(SPACE, dear, 32)) / model.relative(costs.work(SPACE, cheap, 32))
    assert ratio > 5  # the choice below is about cost, not a near tie
    run.finish(cheap, 0.6, 0.1)
    run.finish(dear, 0.6, 0.1 * ratio)
    for _ in range(4):
        trial = run.oracle.create_trial("tuner0")
        assert trial.status == "RUNNING"
        kind, fields = run.events[-1]
        assert kind == "trial_proposed" and fields["trial_id"] == trial.trial_id
        assert fields["proposed_by"] == "expected improvement per second"
        sizes = costs.work(SPACE, trial.hyperparameters.values, 32)
        assert fields["predicted_seconds"] == pytest.approx(
            costs.fit(costs.timed(run.records.values(), SPACE, 32)).seconds_per_epoch(sizes) * 30, abs=0.06)
        run.end(trial, 0.6)
        run.records[trial.trial_id] = TrialRecord(trial_id=trial.trial_id, status=TrialStatus.RUNNING,
                                                  hyperparameters=dict(trial.hyperparameters.values))
    proposed = [t.hyperparameters.values for t in run.oracle.trials.values()][2:]
    # equal scores everywhere: improvement is a matter of uncertainty, and per second the cheap corner wins
    # (the same oracle blind to cost proposed 64 px for two of the four)
    assert [v["input.image_size"] for v in proposed] == [32, 32, 32, 32]


def test_no_proposal_overruns_the_deadline_and_the_search_ends_when_none_fits(tmp_path):
    import time

    run = Run(tmp_path, deadline=time.time() + 22, initial=8)  # random initial points, then the process
    run.finish({"input.image_size": 32, "blocks.type": "conv", "blocks.filters": 8, "optimizer.learning_rate": 3e-3}, 0.5, 0.5)
    model = costs.fit(costs.timed(run.records.values(), SPACE, 32))
    for _ in range(6):  # 22 s left, 30 epochs a trial: only what costs under 0.73 s an epoch may start (no 64 px)
        trial = run.oracle.create_trial("tuner0")
        assert trial.status == "RUNNING"
        assert model.seconds_per_epoch(costs.work(SPACE, trial.hyperparameters.values, 32)) * 30 <= 22
        assert run.events[-1][1]["predicted_seconds"] <= 22
        run.end(trial, 0.5)
    assert all(v["input.image_size"] == 32 for v in (t.hyperparameters.values for t in run.oracle.trials.values()))

    late = Run(tmp_path / "late", deadline=time.time() + 5)
    late.finish({"input.image_size": 32, "blocks.type": "conv", "blocks.filters": 8, "optimizer.learning_rate": 3e-3}, 0.5, 0.5)
    trial = late.oracle.create_trial("tuner0")
    assert trial.status == "STOPPED" and len(late.oracle.trials) == 1
    reason = stop_reason(late.oracle)
    assert reason.startswith("no untried proposal is predicted to finish all its folds in the ") and reason.endswith(" s left")


def test_nas_search_cost_aware_logs_each_proposal_and_its_prediction(tmp_path, tiny_data):
    exp = write_experiment(tmp_path / "exp.toml", tiny_data,
                           search={"tuner": "bayesian", "cost_aware": True, "bayesian_initial_points": 1,
                                   "space": str(REPO / "search_spaces" / "small_cnn.yaml")},
                           budget={"max_trials": 3, "epochs": 1})
    res = cli("search", exp, "--results", tmp_path / "results")
    assert res.code == 0, res.err
    run = next((tmp_path / "results").glob("tiny/*"))
    events = read_events(run / "trials.jsonl")
    proposed = [e for e in events if e["event"] == "trial_proposed"]
    assert [e["proposed_by"] for e in proposed] == ["initial point", "expected improvement per second",
                                                   "expected improvement per second"]
    assert proposed[0]["predicted_seconds"] is None and all(e["predicted_seconds"] > 0 for e in proposed[1:])
    trials = read_trials(run / "trials.jsonl")
    assert len(trials) == 3 and all(t.status is TrialStatus.FINISHED for t in trials.values())
    assert trials[proposed[1]["trial_id"]].predicted_seconds == proposed[1]["predicted_seconds"]
    assert events[-1]["event"] == "search_ended" and events[-1]["reason"] == "budget of trials reached"
    said = f"trial {proposed[2]['trial_id']}: proposed as expected improvement per second, predicted "
    assert said + f"{proposed[2]['predicted_seconds']:.0f}s" in res.out


def test_cost_aware_with_a_tuner_that_cannot_use_it_is_refused_in_one_line(tmp_path, tiny_data):
    exp = write_experiment(tmp_path / "exp.toml", tiny_data, search={"tuner": "hyperband", "cost_aware": True})
    res = cli("search", exp, "--results", tmp_path / "results")
    assert res.code != 0
    assert "search.cost_aware = true works with search.tuner random or bayesian, not hyperband" in res.err


CHEAP = {"input.image_size": 32, "blocks.type": "conv", "blocks.filters": 8, "optimizer.learning_rate": 3e-3}
DEAR = {"input.image_size": 64, "blocks.type": "residual", "blocks.filters": 16, "optimizer.learning_rate": 3e-3}


def test_improvement_is_measured_from_the_best_score_and_the_better_region_wins_at_equal_cost(tmp_path, monkeypatch):
    from nas.search import oracles

    seen = []
    real = oracles.expected_improvement
    monkeypatch.setattr(oracles, "expected_improvement", lambda mu, sd, best: seen.append(best) or real(mu, sd, best))
    run = Run(tmp_path, initial=3)
    for lr, score in ((1e-3, 0.2), (2e-3, 0.3), (1e-2, 0.9)):  # one architecture: the cost is equal everywhere
        run.finish({**CHEAP, "optimizer.learning_rate": lr}, score, 0.1)
    trial, fields = run.propose()
    assert fields["proposed_by"] == "expected improvement per second"
    assert seen == [-0.9]  # the process models the negated score: the best seen is the lowest value
    assert trial.hyperparameters.values["optimizer.learning_rate"] > 4e-3  # next to the 0.9, not the 0.2


def test_the_deadline_binds_the_gaussian_process_too(tmp_path):
    import time

    run = Run(tmp_path, deadline=time.time() + 80, initial=2)
    big = {**CHEAP, "input.image_size": 64}  # four times the pixels
    run.finish(big, 0.95, 4.0)  # 120 s a trial, and it scores best: without the deadline the process goes there
    run.finish(CHEAP, 0.3, 1.0)  # 30 s a trial
    model = costs.fit(costs.timed(run.records.values(), SPACE, 32))
    for _ in range(4):
        trial, fields = run.propose()
        assert fields["proposed_by"] == "expected improvement per second"
        need = model.seconds_per_epoch(costs.work(SPACE, trial.hyperparameters.values, 32)) * 30
        assert need <= 80 and fields["predicted_seconds"] == pytest.approx(need, abs=0.06)
        run.end(trial, 0.5)


def test_a_warm_start_that_cannot_finish_is_passed_over_and_the_search_goes_on(tmp_path):
    import time

    space = parse_space(SPACE_TEXT + "warm_start:\n  - " + flow(DEAR) + "\n  - " + flow(CHEAP) + "\n", "w.yaml")
    run = Run(tmp_path, deadline=time.time() + 60, initial=1, space=space)
    run.finish({**CHEAP, "optimizer.learning_rate": 5e-3}, 0.5, 0.5)  # 15 s for the cheap network; the dear one 77 s
    trial, fields = run.propose()
    assert fields["proposed_by"] == "warm start" and trial.hyperparameters.values == CHEAP
    run.end(trial, 0.5)
    trial, fields = run.propose()  # the dear warm start is still untried, and the process is not held up by it
    assert fields["proposed_by"] == "expected improvement per second"
    assert trial.hyperparameters.values["input.image_size"] == 32


def flow(values: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in values.items()) + "}"


def cheap_ones_and_a_better_dear_one(run: Run) -> None:
    """The trap cooling is for: three cheap trials the process is sure are poor, one dear trial that is better."""
    ratio = costs.CostModel(1.0).relative(costs.work(SPACE, DEAR, 32)) / costs.CostModel(1.0).relative(costs.work(SPACE, CHEAP, 32))
    for lr, score in ((1e-3, 0.62), (3e-3, 0.6), (1e-2, 0.61)):
        run.finish({**CHEAP, "optimizer.learning_rate": lr}, score, 0.1)
    run.finish(DEAR, 0.8, 0.1 * ratio)


@pytest.mark.parametrize("cooled", [False, True])
def test_cooling_spends_the_end_of_the_budget_where_the_process_expects_the_best(tmp_path, cooled):
    run = Run(tmp_path, initial=4, max_trials=6, cooling=Cooling() if cooled else None)
    cheap_ones_and_a_better_dear_one(run)
    sizes, exponents = [], []
    for _ in range(2):  # trials 5 and 6 of 6: the first and the last proposal of the process
        trial, fields = run.propose()
        assert fields["proposed_by"] == "expected improvement per second"
        sizes.append(trial.hyperparameters.values["input.image_size"])
        exponents.append(fields.get("cost_exponent"))
        run.end(trial, 0.6)
    # per second (cost^1) both proposals stay in the cheap 32 px corner; cooled, the first is the same choice
    # and the last, at cost^0, goes to 64 px, the region that scored best
    assert sizes == ([32, 64] if cooled else [32, 32])
    assert exponents == ([1.0, 0.0] if cooled else [None, None])


def test_cooling_falls_with_the_time_left(monkeypatch):
    from nas.search import oracles

    clock = [1000.0]
    monkeypatch.setattr(oracles.time, "time", lambda: clock[0])
    cooling, deadline = Cooling(), 1100.0
    assert cooling.exponent(deadline, done=3, max_trials=50) == 1.0  # the first proposal sets the start
    clock[0] = 1075.0
    assert cooling.exponent(deadline, done=9, max_trials=50) == 0.25  # a quarter of the time left
    clock[0] = 1101.0
    assert cooling.exponent(deadline, done=12, max_trials=50) == 0.0  # past the deadline: never negative


def test_nas_search_cost_cooling_and_noise_aware_log_and_say_the_exponent(tmp_path, tiny_data, monkeypatch):
    from nas import ktadapter

    built = []
    real = ktadapter.noise_aware_process
    monkeypatch.setattr(ktadapter, "noise_aware_process", lambda dims, seed: built.append(dims) or real(dims, seed))
    exp = write_experiment(tmp_path / "exp.toml", tiny_data,
                           search={"tuner": "bayesian", "cost_aware": True, "cost_cooling": True, "noise_aware": True,
                                   "bayesian_initial_points": 1, "space": str(REPO / "search_spaces" / "small_cnn.yaml")},
                           budget={"max_trials": 4, "epochs": 1})
    res = cli("search", exp, "--results", tmp_path / "results")
    assert res.code == 0, res.err
    assert len(built) == 3  # each proposal of the process fitted the noise-aware one
    events = read_events(next((tmp_path / "results").glob("tiny/*")) / "trials.jsonl")
    proposed = [e for e in events if e["event"] == "trial_proposed"]
    # no time budget: the exponent falls by trials, from 1 at the process's first proposal to 0 at the last
    assert [e.get("cost_exponent") for e in proposed] == [None, 1.0, 0.5, 0.0]
    assert f"trial {proposed[2]['trial_id']}: proposed as expected improvement per second (cost^0.50), predicted " in res.out


@pytest.mark.parametrize("name", ["cost_cooling", "noise_aware"])
def test_a_cost_aware_option_without_cost_aware_is_refused_in_one_line(tmp_path, tiny_data, name):
    exp = write_experiment(tmp_path / "exp.toml", tiny_data, search={"tuner": "bayesian", name: True})
    res = cli("search", exp, "--results", tmp_path / "results")
    assert res.code != 0
    assert f"search.{name} = true changes cost-aware proposals: set search.cost_aware = true too" in res.err


def test_the_noise_aware_process_sees_through_noisy_scores(tmp_path):
    from nas import ktadapter

    run = Run(tmp_path, initial=12, max_trials=20)
    # one cheap network, its scores scattered by the learning rate as one-fold scores are; a dear one better
    for lr, score in ((1e-3, 0.66), (1.5e-3, 0.85), (2e-3, 0.70), (3e-3, 0.86), (4e-3, 0.68), (6e-3, 0.84), (8e-3, 0.71)):
        run.finish({**CHEAP, "optimizer.learning_rate": lr}, score, 0.1)
    for lr, score in ((2e-3, 0.90), (5e-3, 0.91)):
        run.finish({**DEAR, "optimizer.learning_rate": lr}, score, 0.7)
    x, _ = run.oracle._vectorize_trials()
    cheap, dear = x[:7].mean(axis=0), x[7:].mean(axis=0)
    gp, _ = ktadapter.gaussian_process(run.oracle, noise_aware=True)
    mu = -gp.predict(np.stack([cheap, dear]))  # the process models the negated score
    assert mu[1] - mu[0] > 0.04  # the dear region predicted better (the groups' means: 0.757 and 0.905)
    assert gp.kernel_.k2.noise_level > 1e-3  # the scatter is taken as noise, not interpolated
    # why the option exists: KerasTuner's noise-free process interpolates the scatter with a vanishing length
    # scale and predicts the same everywhere (here 0.79 at both), so expected improvement sees no regions
    kt, _ = ktadapter.gaussian_process(run.oracle)
    flat = -kt.predict(np.stack([cheap, dear]))
    assert abs(flat[1] - flat[0]) < 0.01
