"""The experiment spec: strict validation with one-line errors, deterministic trial numbering, and the k-fold partition."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from job.cli import main
from job.config.settings import DataConfig, load_config
from job.data.dataset import load_dataset, split_indices
from job.config.experiment_spec import load_spec

from .conftest import write_archive

pytestmark = pytest.mark.fast

SPEC = """\
name: lr-seeds
base: {train: {epochs: 1, seed: 7}}
grid:
  train.learning_rate: [0.05, 0.1]
  train.batch_size: [16, 32, 64]
seeds: 2
folds: 3
select: val_loss
"""


def _write(tmp_path: Path, text: str) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    return spec


def test_trials_are_the_product_grid_seeds_folds_numbered_in_that_nesting(tmp_path: Path) -> None:
    trials = load_spec(_write(tmp_path, SPEC), env={}).trials()
    assert len(trials) == 2 * 3 * 2 * 3
    expected = [
        (lr, batch, seed, fold)
        for lr in (0.05, 0.1) for batch in (16, 32, 64) for seed in (7, 8) for fold in range(3)
    ]  # fmt: skip
    got = [(t.overrides["train.learning_rate"], t.overrides["train.batch_size"], t.seed, t.fold) for t in trials]
    assert got == expected
    assert [t.index for t in trials] == list(range(36))
    assert [t.group for t in trials] == [i // 6 for i in range(36)]
    config = trials[35].config(tmp_path / "exp")
    assert config.out == tmp_path / "exp/trials/0035"
    assert (config.train.learning_rate, config.train.batch_size, config.train.seed, config.data.folds, config.data.fold) == (0.1, 64, 8, 3, 2)
    assert config.train.epochs == 1
    assert load_spec(_write(tmp_path, SPEC), env={}).trials() == trials  # deterministic


def test_a_grid_value_beats_the_command_line_and_seeds_count_from_the_resolved_seed(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, SPEC), env={"CIFAR_JOB_TRAIN_SEED": "100"}, flags={"train.learning_rate": 0.5, "train.patience": 2})
    assert {t.settings.train.learning_rate for t in spec.trials()} == {0.05, 0.1}
    assert {t.seed for t in spec.trials()} == {100, 101}
    assert {t.settings.train.patience for t in spec.trials()} == {2}


def test_experiment_trials_prints_the_count_and_with_json_every_trial(tmp_path: Path) -> None:
    spec = _write(tmp_path, SPEC)
    result = CliRunner().invoke(main, ["experiment", "trials", str(spec)], env={})
    assert (result.exit_code, result.stdout) == (0, "36\n")
    result = CliRunner().invoke(main, ["experiment", "trials", "--json", str(spec)], env={})
    listed = json.loads(result.stdout)
    assert listed[7] == {
        "index": 7, "group": 1,
        "overrides": {"train.learning_rate": 0.05, "train.batch_size": 32, "train.seed": 7, "data.folds": 3, "data.fold": 1},
    }  # fmt: skip


def test_a_spec_without_seeds_folds_or_grid_is_one_trial_of_the_base(tmp_path: Path) -> None:
    (trial,) = load_spec(_write(tmp_path, "name: one\nbase: {recipe: fast}\n"), env={}).trials()
    assert trial.overrides == {} and trial.fold is None
    assert trial.settings == load_config(env={}, overrides={"recipe": "fast"})


BAD = {
    "bad name": ("name: Lr_Seeds\n", "key name: string should match pattern"),
    "no name": ("seeds: 2\n", "key name: field required"),
    "unknown key": ("name: a\nseed: 3\n", "key seed: unknown key; expected one of: name, base, grid, seeds, folds, select"),
    "empty list": ("name: a\ngrid: {train.epochs: []}\n", "key grid.train.epochs: list should have at least 1 item"),
    "not a list": ("name: a\ngrid: {train.epochs: 3}\n", "key grid.train.epochs: input should be a valid list, got 3"),
    "too few folds": ("name: a\nfolds: 1\n", "key folds: input should be greater than or equal to 2, got 1"),
    "bad select": ("name: a\nselect: test_accuracy\n", "key select: input should be 'val_accuracy' or 'val_loss'"),
    "too many trials": ("name: a\ngrid: {train.epochs: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]}\nseeds: 10\nfolds: 10\n", ": 1100 trials (grid x seeds x folds); at most 1000"),
    "out in base": ("name: a\nbase: {out: /tmp/x}\n", "key base.out: not allowed here (the experiment sets each trial's run directory)"),
    "fold in base": ("name: a\nbase: {data: {folds: 3}}\n", "key base.data.folds: not allowed here (use folds:)"),
    "seed in the grid with seeds": ("name: a\ngrid: {train.seed: [1, 2]}\nseeds: 2\n", "key grid.train.seed: not allowed here (seeds: sets it)"),
    "not YAML": ("name: [a\n", "line 2: not valid YAML"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_spec_is_one_line_naming_the_spec_and_key_exit_2_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    text, problem = BAD[case]
    spec, out = _write(tmp_path, text), tmp_path / "exp"
    result = CliRunner().invoke(main, ["experiment", "run", str(spec), "--out", str(out)], env={})
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"cifar-job: error: experiment spec {spec}")
    assert problem in result.stderr and result.stderr.count("\n") == 1
    assert not out.exists()


def test_a_bad_grid_value_names_the_key_and_the_spec_before_any_work(tmp_path: Path) -> None:
    spec, out = _write(tmp_path, "name: a\ngrid:\n  train.learning_rate: [0.1, -1]\n  train.momentum: [0.9]\n"), tmp_path / "exp"
    result = CliRunner().invoke(main, ["experiment", "run", str(spec), "--out", str(out)], env={})
    assert result.exit_code == 2
    assert result.stderr == f"cifar-job: error: config key train.learning_rate (from experiment spec {spec} trial 1): input should be greater than 0, got -1\n"
    assert not out.exists()


def test_index_out_of_range_is_a_config_error(tmp_path: Path) -> None:
    spec, out = _write(tmp_path, "name: a\nseeds: 2\n"), tmp_path / "exp"
    result = CliRunner().invoke(main, ["experiment", "run", str(spec), "--out", str(out), "--index", "2"], env={})
    assert (result.exit_code, result.stderr) == (2, "cifar-job: error: --index 2: experiment a has 2 trials (0..1)\n")


# --- k-fold -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "folds"), [(600, 3), (1000, 5), (10, 10), (997, 7)])
def test_the_folds_partition_the_training_images_stratified(n: int, folds: int) -> None:
    labels = np.random.default_rng(n).integers(0, 10, n)
    splits = [split_indices(labels, DataConfig(folds=folds, fold=f, train_limit=max(n, 10))) for f in range(folds)]
    validation = np.concatenate([v for _, v in splits])
    assert sorted(validation) == list(range(n))  # every image in exactly one fold's validation split
    for f, (train, val) in enumerate(splits):
        assert sorted(np.concatenate([train, val])) == list(range(n))  # the rest is the training split
        assert len(val) == DataConfig(folds=folds, fold=f, train_limit=max(n, 10)).split_sizes()[1]
        expected = np.bincount(labels, minlength=10) / folds
        assert np.all(np.abs(np.bincount(labels[val], minlength=10) - expected) <= 1)  # stratified
    other_seed = split_indices(labels, DataConfig(folds=folds, fold=0, split_seed=2, train_limit=max(n, 10)))[1]
    assert n < 100 or set(splits[0][1]) != set(other_seed)  # seeded


def test_a_fold_split_loads_with_the_sizes_the_config_promises(cifar_files: dict[str, bytes], tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "c.tar.gz", cifar_files)
    for fold in range(3):
        cfg = DataConfig(source=str(archive), train_limit=100, test_limit=10, folds=3, fold=fold)
        loaded = load_dataset(cfg)
        assert cfg.split_sizes() == (len(loaded.train_labels), len(loaded.val_labels), len(loaded.test_labels))


@pytest.mark.parametrize(
    ("settings", "problem"),
    [({"fold": 1}, "fold 1 without data.folds; set data.folds too"), ({"folds": 3, "fold": 3}, "fold 3 of 3 folds; expected 0..2")],
)
def test_a_fold_outside_the_folds_is_refused(settings: dict[str, int], problem: str) -> None:
    with pytest.raises(Exception, match=problem):
        load_config(env={}, overrides={f"data.{k}": v for k, v in settings.items()})


def test_the_fold_is_part_of_the_training_digest() -> None:
    digests = {load_config(env={}, overrides=o).training_digest() for o in ({}, {"data.folds": 3}, {"data.folds": 3, "data.fold": 1})}
    assert len(digests) == 3


def test_parallel_trials_cannot_share_a_metrics_port(tmp_path: Path) -> None:
    spec, out = _write(tmp_path, "name: a\nseeds: 2\n"), tmp_path / "exp"
    args = ["experiment", "run", str(spec), "--out", str(out), "--parallel", "2", "--set", "metrics.port=9100"]
    result = CliRunner().invoke(main, args, env={})
    assert result.exit_code == 2
    assert result.stderr == "cifar-job: error: --parallel 2: the trials would all serve /metrics on port 9100; set metrics.port=0 or run one at a time\n"
    assert not out.exists()
