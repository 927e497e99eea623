"""python -m cleanmetta.tune: the space's grammar and its errors, a tiny study end to end whose best.yaml
train.py runs as it is, pruning that stops a run as SIGTERM does, two tuners on one study, and a
killed tuner that continues its study."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from cleanmetta import tune
from cleanmetta.config import ConfigError, TrainingConfig
from cleanmetta.tune_runs import Run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train.py")
ENV = {**os.environ, "PYTHONPATH": ROOT}
SPACE = ["--space", "trainer.learning_rate=1e-4..3e-3:log,ppo.clip_coef=0.1..0.3", "--space", "agent.hidden_size=16|32"]


@pytest.fixture
def optuna():
    return pytest.importorskip("optuna", reason='the tune extra: pip install -e ".[tune]"')


def tuner(study_dir, *flags, steps=2048):
    """The command of a tuner on `study_dir` (CartPole, short runs)."""
    return [sys.executable, "-m", "cleanmetta.tune", *SPACE, "--study-dir", str(study_dir), "--script", TRAIN,
            "--sampler-seed", "0", "--reports", "4", *flags, "--", "--trainer.total-timesteps", str(steps), "--log.no-tensorboard"]


def trials_of(study_dir, optuna):
    study = optuna.load_study(study_name="cleanmetta", storage=f"sqlite:///{study_dir}/study.db")
    return study.get_trials(deepcopy=False)


def test_the_space_reads_ranges_log_scales_and_choices():
    params = tune.parse_space(["trainer.learning_rate=1e-4..3e-3:log,ppo.update_epochs=1..8",
                               "agent.hidden_size=64|128|256,trainer.optimizer=adam|muon"])
    assert params == [tune.Param("trainer.learning_rate", "float", 1e-4, 3e-3, log=True),
                      tune.Param("ppo.update_epochs", "int", 1, 8),
                      tune.Param("agent.hidden_size", "choice", choices=(64, 128, 256)),
                      tune.Param("trainer.optimizer", "choice", choices=("adam", "muon"))]
    config = tune.config_with(TrainingConfig(), {"ppo.update_epochs": 3, "trainer.optimizer": "muon"})
    assert (config.ppo.update_epochs, config.trainer.optimizer) == (3, "muon")
    assert tune.ranges_as_flags(["--score-ranges", "0..500", "-500..0", "--seeds", "2"]) == \
        ["--score-ranges=0..500", "--score-ranges=-500..0", "--seeds", "2"]


def test_a_runs_score_at_each_report_point_and_its_value(tmp_path):
    args, _ = tune.parse_args(["--space", "ppo.clip_coef=0.1..0.3", "--script", TRAIN, "--reports", "4",
                               "--last-episodes", "2", "--tasks", "CartPole-v1", "Acrobot-v1",
                               "--score-ranges", "0..500", "-500..0", "--trainer.total-timesteps", "400"])
    run = Run(args, TrainingConfig.from_dict({"trainer": {"total_timesteps": 400}}), str(tmp_path), 1, 1)
    assert run.passed([], done=False) == []                            # nothing logged yet: no point passed
    assert run.passed([(200, -500.0), (200, -400.0)], done=False) == [0, 1]  # the rows of epoch 1 (steps 200)
    assert run.scores == [pytest.approx(float("nan"), nan_ok=True), 0.1]  # point 100: no episode yet (NaN)
    assert run.passed([(400, -300.0)], done=False) == [2, 3]
    assert run.scores[2:] == [0.1, pytest.approx(0.3)]                 # the last 2 returns, mapped -500..0 -> 0..1
    assert run.value() == pytest.approx(0.3)                           # score: the run's last episodes
    args.objective = "auc"
    assert run.value() == pytest.approx((0.1 + 0.1 + 0.3) / 3)          # auc: the mean over the points with a score


@pytest.mark.parametrize("flags, message", [
    (["--space", "ppo.clip_cof=0.1..0.3"], "unknown config key 'ppo.clip_cof'; did you mean 'ppo.clip_coef'?"),
    (["--space", "ppo.clip_coef=0.3..0.1"], "is an empty range"),
    (["--space", "ppo.clip_coef=0.2..0.2"], "is an empty range: write low..high with low < high"),
    (["--space", "ppo.clip_coef=-1..0.3"], "--space ppo.clip_coef=-1: invalid training config: ppo.clip_coef=-1.0 must be a finite number > 0"),
    (["--space", "trainer.learning_rate=0..1e-3:log"], "':log' needs a range of positive numbers"),
    (["--space", "ppo.clip_coef=0.2"], "is one value, not a range or a choice"),
    (["--space", "ppo.clip_coef=0.1..0.3", "--space", "ppo.clip_coef=0.2|0.3"], "names a flag twice"),
    (["--space", "agent.name=mlp|cnn"], "--space agent.name='cnn'"),
    ([], "--space is empty"),
    (["--space", "ppo.clip_coef=0.1..0.3", "--tasks", "CartPole-v1", "Acrobot-v1"], "give each its score range"),
    (["--space", "ppo.clip_coef=0.1..0.3", "--tasks", "CartPole-v1", "Acrobot-v1", "--score-ranges", "0..500"],
     "--score-ranges has 1 ranges for 2 tasks"),
    (["--space", "ppo.clip_coef=0.1..0.3", "--objective", "score,seconds", "--pruner", "median"],
     "Optuna prunes single-objective studies only"),
    (["--space", "ppo.clip_coef=0.1..0.3", "--script", "no_such_train.py"], "--script 'no_such_train.py' is not a file"),
    (["--space", "ppo.clip_coef=0.1..0.3", "--seeds", "0"], "--seeds=0 must be >= 1"),
])
def test_bad_flags_are_one_line_errors_before_any_trial(flags, message):
    with pytest.raises(ConfigError) as err:
        tune.parse_args(flags if "--script" in flags else [*flags, "--script", TRAIN])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_storage_that_cannot_be_opened_and_a_study_made_otherwise_are_refused(optuna, tmp_path):
    args, base = tune.parse_args(["--space", "ppo.clip_coef=0.1..0.3", "--script", TRAIN, "--study-dir", str(tmp_path),
                                  "--storage", "postgresql://nobody@127.0.0.1:1/none"])
    with pytest.raises(ConfigError, match="--storage 'postgresql://nobody@127.0.0.1:1/none' cannot be opened: "):
        tune.open_study(args, base)
    args, base = tune.parse_args(["--space", "ppo.clip_coef=0.1..0.3", "--script", TRAIN, "--study-dir", str(tmp_path)])
    tune.open_study(args, base)
    args, base = tune.parse_args(["--space", "ppo.clip_coef=0.1..0.2", "--script", TRAIN, "--study-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match=r"was made with other settings \(space\): continue it with the same flags"):
        tune.open_study(args, base)


def test_without_the_tune_extra_the_error_names_the_install_command(tmp_path):
    hide = "import sys; sys.modules['optuna'] = None; from cleanmetta import tune; tune.main(sys.argv[1:])"
    result = subprocess.run([sys.executable, "-c", f"{hide}", "--space", "ppo.clip_coef=0.1..0.3", "--script", TRAIN],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert "python -m cleanmetta.tune needs optuna" in result.stderr and 'pip install -e ".[tune]"' in result.stderr


def test_a_tiny_study_writes_a_best_yaml_that_train_py_runs_as_the_best_trial(optuna, tmp_path):
    study_dir = tmp_path / "study"
    result = subprocess.run(tuner(study_dir, "--trials", "3", "--jobs", "2"), cwd=tmp_path, env=ENV,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    trials = trials_of(study_dir, optuna)
    assert len(trials) in (3, 4) and all(t.state.name == "COMPLETE" for t in trials)  # --jobs 2: 2 at a time
    best = max(trials, key=lambda t: t.values[0])
    for trial in trials:  # the value is the run's last-20 return, read back from its episodes.csv
        run = study_dir / "trials" / str(trial.number) / "CartPole-v1__seed1"
        record = json.loads((run / "tune.json").read_text())
        assert record["state"] == "complete" and record["runs"]["CartPole-v1__seed1"]["exit"] == 0
        returns = [float(line.split(",")[2]) for line in (run / "episodes.csv").read_text().splitlines()[1:]]
        assert trial.values[0] == pytest.approx(sum(returns[-20:]) / len(returns[-20:]))
        assert sorted(trial.intermediate_values) == [0, 1, 2, 3]  # --reports 4, every 512 steps (an epoch)
        assert trial.intermediate_values[3] == pytest.approx(trial.values[0])
    assert f"| {best.number} | complete | {best.values[0]:.4g} |" in (study_dir / "results.md").read_text()
    assert f"| {best.number} | complete |" in result.stdout

    subprocess.run([sys.executable, TRAIN, "--config", str(study_dir / "best.yaml"), "--log.run-root", str(tmp_path),
                    "--experiment-name", "winner"], cwd=tmp_path, env=ENV, check=True, capture_output=True)
    trained = json.loads((tmp_path / "winner" / "config.json").read_text())
    tried = json.loads((study_dir / "trials" / str(best.number) / "CartPole-v1__seed1" / "config.json").read_text())
    for config in (trained, tried):
        config.pop("experiment_name"), config["log"].pop("run_root")
    assert trained == tried
    def returns(run_dir):  # a run forked from the tuner's fork server learns as one started afresh
        return [line.split(",")[2] for line in (run_dir / "episodes.csv").read_text().splitlines()]
    assert returns(tmp_path / "winner") == returns(study_dir / "trials" / str(best.number) / "CartPole-v1__seed1")
    assert yaml.safe_load((study_dir / "best.yaml").read_text())["trainer"]["learning_rate"] == \
        best.params["trainer.learning_rate"]

    # Started again, the study is finished: nothing runs, nothing is lost.
    again = subprocess.run(tuner(study_dir, "--trials", "3"), cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0 and f"{len(trials)} of 3 trials finished" in again.stdout
    assert len(trials_of(study_dir, optuna)) == len(trials)


def test_a_pruned_trial_stops_its_run_as_sigterm_does(optuna, tmp_path):
    args, base = tune.parse_args(["--space", "ppo.clip_coef=0.1..0.3", "--script", TRAIN, "--tasks", "Acrobot-v1",
                                  "--study-dir", str(tmp_path), "--trainer.total-timesteps", "100000"])
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1e9))
    study.optimize(tune.Objective(args, base), n_trials=1)  # the first report is below the threshold: pruned
    assert study.trials[0].state.name == "PRUNED" and list(study.trials[0].intermediate_values) == [0]
    assert study.trials[0].user_attrs["config"]["env"]["id"] == "Acrobot-v1"  # best.yaml trains the first task
    run = tmp_path / "trials" / "0" / "Acrobot-v1__seed1"
    record = json.loads((run / "tune.json").read_text())
    assert record["state"] == "pruned" and record["runs"]["Acrobot-v1__seed1"]["exit"] == 0
    summary = json.loads((run / "summary.json").read_text())
    assert 10_000 <= summary["agent_steps"] < 100_000  # stopped early, at an epoch's end
    assert os.listdir(run / "trainer_states")  # and saved there, as at SIGTERM


def test_two_tuners_share_one_study(optuna, tmp_path):
    study_dir = tmp_path / "study"
    workers = [subprocess.Popen(tuner(study_dir, "--trials", "4"), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [worker.communicate()[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    trials = trials_of(study_dir, optuna)
    assert sum(t.state.name == "COMPLETE" for t in trials) >= 4 and not any(t.state.name == "RUNNING" for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both tuners ran trials of the study
    assert sorted(int(n) for n in os.listdir(study_dir / "trials")) == [t.number for t in trials]


def test_a_killed_tuner_continues_its_study(optuna, tmp_path):
    study_dir = tmp_path / "study"
    command = tuner(study_dir, "--trials", "3", steps=20_000)
    first = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (study_dir / "trials" / "1" / "CartPole-v1__seed1" / "episodes.csv").exists() and time.time() < deadline:
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGKILL)  # no cleanup at all; its run gets SIGTERM from the kernel, saves, exits
    first.wait()
    finished = (study_dir / "trials" / "0" / "tune.json").read_text()
    result = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "1 of 3 trials finished" in result.stdout
    trials = trials_of(study_dir, optuna)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]  # the killed one failed
    assert (study_dir / "trials" / "0" / "tune.json").read_text() == finished  # trial 0 was not run again


def test_sigterm_stops_the_tuner_cleanly_and_its_run_saves(optuna, tmp_path):
    study_dir = tmp_path / "study"
    first = subprocess.Popen(tuner(study_dir, "--trials", "2", steps=1_000_000), cwd=tmp_path, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = study_dir / "trials" / "0" / "CartPole-v1__seed1"
    deadline = time.time() + 120
    while not (run / "episodes.csv").exists() and time.time() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 1 and "stopped: the same command continues the study" in err
    assert [t.state.name for t in trials_of(study_dir, optuna)] == ["FAIL"]
    assert json.loads((run / "tune.json").read_text())["runs"]["CartPole-v1__seed1"]["exit"] == 0
    assert os.listdir(run / "trainer_states") and (study_dir / "results.md").exists()
