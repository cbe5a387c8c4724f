"""Named recipes as config defaults, and what the new recipes are made of: schedule, augmentation, whitening, test-time views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from job.cli import main
from job.config.settings import Config, load_config
from job.models.contract import scale
from job.models.registry import REGISTRY, build_model, initialise, with_test_time_augmentation
from job.config.recipes import RECIPES, recipe_names

pytestmark = pytest.mark.fast


def test_every_architecture_has_recipes_and_every_recipe_is_a_valid_config() -> None:
    assert set(RECIPES) == set(REGISTRY)
    for architecture in RECIPES:
        for recipe in recipe_names(architecture):
            config = load_config(env={}, overrides={"model.name": architecture, "recipe": recipe})
            assert config.model.name == architecture and config.recipe == recipe


def test_the_default_recipe_is_the_study_for_its_cnn_and_the_own_one_for_airbench() -> None:
    assert load_config(env={}) == load_config(env={}, overrides={"recipe": "study"}).model_copy(update={"recipe": "default"})
    assert load_config(env={}).train == Config().train
    airbench = load_config(env={}, overrides={"model.name": "airbench"})
    assert airbench.train.lr_schedule == "one_cycle" and airbench.export.test_time_augmentation != "none"


def test_gate_defaults_are_per_recipe() -> None:
    study = load_config(env={})
    assert (study.gate.min_accuracy, study.gate.min_weighted_f1) == (0.7562, 0.7539)
    airbench = load_config(env={}, overrides={"model.name": "airbench"})
    assert airbench.gate.min_accuracy > 0.85 and airbench.gate.min_weighted_f1 > 0.85


def test_a_recipe_is_a_layer_beneath_file_environment_and_flags(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("recipe: fast\ntrain:\n  epochs: 7\n")
    config = load_config(file, env={"CIFAR_JOB_TRAIN_BATCH_SIZE": "64"}, overrides={"train.label_smoothing": 0.0})
    assert config.recipe == "fast"
    assert (config.train.epochs, config.train.batch_size, config.train.label_smoothing) == (7, 64, 0.0)  # the user's
    assert config.train.lr_schedule == "one_cycle" and config.train.augmentation == "flip_crop"  # the recipe's
    assert load_config(env={"CIFAR_JOB_RECIPE": "best"}).train.epochs == 40
    # the last layer that names the recipe wins, as for any key
    assert load_config(file, env={}, overrides={"recipe": "study"}).train.lr_schedule == "inverse_time"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--set", "recipe=quick"], "config key recipe (from command line): reference_cnn has no recipe 'quick'; expected one of: default, study"),
        (["--set", "model.name=airbench", "--set", "recipe=best"], "config key recipe (from command line): airbench has no recipe 'best'"),
        (["--set", "model.name=resnet"], "config key model.name (from command line): unknown architecture 'resnet'; expected one of: reference_cnn"),
    ],
)
def test_an_unknown_recipe_or_architecture_is_one_line_and_exit_2(args: list[str], line: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["data", "verify", "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"cifar-job: error: {line}")
    assert not (tmp_path / "run").exists()


def test_one_cycle_rises_to_the_peak_then_falls_to_the_end_factor() -> None:
    from job.training.schedules import learning_rate_schedule

    cfg = load_config(env={}, overrides={"model.name": "airbench", "train.learning_rate": 0.4}).train
    schedule = learning_rate_schedule(cfg, total_steps=1000)
    lr = np.array([float(schedule(step)) for step in range(1001)])
    peak = round(cfg.warmup_fraction * 1000)
    assert lr[0] == pytest.approx(0.4 * cfg.lr_start_factor) and lr[peak] == pytest.approx(0.4)
    assert lr[1000] == pytest.approx(0.4 * cfg.lr_end_factor, rel=1e-5)
    assert np.all(np.diff(lr[: peak + 1]) > 0) and np.all(np.diff(lr[peak:]) < 0)


def test_the_study_schedule_is_keras_2_time_based_decay() -> None:
    from job.training.schedules import learning_rate_schedule

    cfg = load_config(env={}).train
    schedule = learning_rate_schedule(cfg, total_steps=10)
    assert float(schedule(1250)) == pytest.approx(0.01 / (1 + 0.01 / 75 * 1250))


def test_flip_crop_moves_each_image_by_whole_pixels_with_reflected_borders() -> None:
    import tensorflow as tf

    from job.training.input_pipeline import augment

    cfg = load_config(env={}, overrides={"recipe": "best"}).train  # crop_pixels 4
    images = np.random.default_rng(0).random((64, 32, 32, 3)).astype(np.float32)
    out = augment(tf.constant(images), cfg, tf.constant([5, 6])).numpy()
    p = cfg.crop_pixels
    shifts_seen = set()
    for image, augmented in zip(images, out):
        padded = {m: np.pad(img, ((p + 1, p + 1), (p + 1, p + 1), (0, 0)), mode="symmetric") for m, img in ((0, image), (1, image[:, ::-1]))}
        matches = [
            (m, dy, dx)
            for m in (0, 1)
            for dy in range(-p, p + 1)
            for dx in range(-p, p + 1)
            if np.array_equal(padded[m][p + 1 - dy : p + 33 - dy, p + 1 - dx : p + 33 - dx], augmented)
        ]
        assert len(matches) == 1
        shifts_seen.add(matches[0])
    assert len(shifts_seen) > 20  # random per image, both flips, many offsets


def test_alternating_flips_mirror_each_image_in_every_other_epoch_and_resume_alike() -> None:
    """airbench's scheme: an image's first flip is random, then it alternates, so two epochs see both mirror images."""
    from job.training.input_pipeline import training_dataset

    overrides = {"recipe": "fast", "train.crop_pixels": 0, "train.alternating_flip": True, "train.epochs": 5, "train.batch_size": 4}
    cfg = load_config(env={}, overrides=overrides).train
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(10)  # one image per class: a batch's one-hot labels say which image each row is

    def flips(first_epoch: int) -> np.ndarray:
        """[epoch, image]: whether the image came out mirrored."""
        seen = np.zeros((cfg.epochs - first_epoch, 10), dtype=bool)
        for step, (x, y) in enumerate(training_dataset(images, labels, cfg, first_epoch)):
            for image, label in zip(x.numpy(), y.numpy().argmax(axis=1)):
                mirrored = np.array_equal(image, scale(images[label])[:, ::-1])
                assert mirrored or np.array_equal(image, scale(images[label]))
                seen[step // 3, label] = mirrored  # ceil(10 / 4) batches per epoch
        return seen

    from_start = flips(0)
    assert 0 < from_start[0].sum() < 10  # the first epoch's flips are per image
    assert np.array_equal(from_start[1:], ~from_start[:-1])  # then every image alternates
    assert np.array_equal(flips(3), from_start[3:])  # a resumed run sees the same flips


def test_lookahead_pulls_the_weights_back_to_a_slow_copy_and_training_ends_on_it() -> None:
    """One weight whose every SGD step is -0.1: the trajectory the documented rule gives, synced at every 5th step,
    every epoch's last step and the last step (where the slow copy is taken as it is)."""
    import keras

    from job.training.lookahead import Lookahead

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=lambda y, p: keras.ops.mean(p))  # dloss/dweight = x = 1
    seen: list[float] = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(float(model.get_weights()[0][0, 0])))
    steps, epochs, decay = 7, 2, 0.5
    model.fit(np.ones((steps, 1)), np.zeros((steps, 1)), batch_size=1, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[Lookahead(decay, steps, steps * epochs), record])  # fmt: skip

    fast = slow = 0.0
    expected = []
    for step in range(1, steps * epochs + 1):
        fast -= 0.1
        if step % 5 == 0 or step % steps == 0:
            keep = 1.0 if step == steps * epochs else decay * (step / (steps * epochs)) ** 3
            slow = keep * slow + (1 - keep) * fast
            fast = slow
        if step % steps == 0:
            expected.append(fast)
    assert seen == pytest.approx(expected, abs=1e-6)
    assert expected[-1] > -1.4 + 0.1  # the averaging is real: plain SGD would end at -1.4


def test_airbench_widths_are_set_by_config_and_refused_for_a_fixed_architecture(tmp_path: Path) -> None:
    wide = load_config(env={}, overrides={"model.name": "airbench", "recipe": "wide"}).model
    model = build_model(wide.name, wide.widths)
    convs = [layer.filters for layer in model.layers if type(layer).__name__ == "Conv2D" and layer.name != "whitening"]
    assert convs == [128, 128, 384, 384, 384, 384]
    result = CliRunner().invoke(main, ["train", "--set", "model.widths=[8, 8, 8]", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "model.widths" in result.output and "only airbench" in result.output
    assert not (tmp_path / "run").exists()
    huge = CliRunner().invoke(main, ["train", "--model", "airbench", "--set", "model.widths=[64, 256, 100000]", "--out", str(tmp_path / "run")])
    assert huge.exit_code == 2 and "model.widths" in huge.output and not (tmp_path / "run").exists()


def test_whitening_decorrelates_the_patches_of_the_training_images(real_archive: Path) -> None:
    from job.data.dataset import load_dataset
    from job.models.registry import CIFAR_MEAN, CIFAR_STD

    data = load_dataset(load_config(env={}, overrides={"data.source": str(real_archive), "data.checksum": None}).data)
    model = build_model("airbench")
    initialise(model, data.train_images)
    kernel = model.get_layer("whitening").kernel.numpy()
    assert np.array_equal(kernel[..., 12:], -kernel[..., :12])  # both signs of each direction
    held_out = (scale(data.val_images[:2000]) - np.float32(CIFAR_MEAN)) / np.float32(CIFAR_STD)
    patches = np.lib.stride_tricks.sliding_window_view(held_out, (2, 2), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12)
    whitened = patches @ kernel[..., :12].reshape(12, 12)
    covariance = whitened.T @ whitened / len(whitened)
    assert np.abs(covariance - np.diag(np.diag(covariance))).max() < 0.05  # decorrelated
    assert np.all(np.diag(covariance)[-6:] > 0.5)  # the strong directions come out near unit variance


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_architecture_maps_images_to_probabilities(name: str) -> None:
    model = build_model(name)
    probabilities = model.predict(np.random.default_rng(1).random((4, 32, 32, 3), dtype=np.float32), verbose=0)
    assert probabilities.shape == (4, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def views(images: np.ndarray) -> list[np.ndarray]:
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifted = [padded[:, :32, :32], padded[:, 2:, 2:]]
    return [images, images[:, :, ::-1], *(v for s in shifted for v in (s, s[:, :, ::-1]))]


@pytest.mark.parametrize("mode", ["flip", "flip_translate"])
def test_test_time_augmentation_is_the_weighted_mean_over_the_views(mode: str) -> None:
    model = build_model("airbench")
    images = np.random.default_rng(2).random((5, 32, 32, 3), dtype=np.float32)
    per_view = [model.predict(v, verbose=0) for v in views(images)]
    weights = [0.5, 0.5] if mode == "flip" else [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    expected = sum(w * p for w, p in zip(weights, per_view))
    served = with_test_time_augmentation(model, mode)
    np.testing.assert_allclose(served.predict(images, verbose=0), expected, atol=1e-6)
    if mode == "flip":  # a flip-averaged model cannot tell an image from its mirror image
        np.testing.assert_allclose(served.predict(images[:, :, ::-1], verbose=0), served.predict(images, verbose=0), atol=1e-6)

