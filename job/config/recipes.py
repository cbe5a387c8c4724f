"""Named recipes: for each architecture, sets of config defaults that are known to work together.

A recipe sits between the built-in defaults and the user's layers (file, environment, flags),
so any key it sets can still be overridden. `recipe: default` picks the architecture's own
recipe: the published study's for `reference_cnn`, `standard` for `airbench`. Each recipe
also carries its quality gate: a floor measured from its own results, not the study's.

Figures in the comments were measured on the shared CIFAR-10 rebuild; README has the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT = "default"

# Flip-and-translate augmentation, one-cycle SGD with Nesterov momentum, decoupled weight decay,
# label smoothing and bf16 compute: what the fast-training literature agrees on, for the study's CNN.
_MODERN_CNN = {
    "train.augmentation": "flip_crop",
    "train.nesterov": True,
    "train.lr_schedule": "one_cycle",
    "train.learning_rate": 0.05,
    "train.weight_decay": 5e-3,
    "train.label_smoothing": 0.1,
    "train.batch_size": 128,
    "train.mixed_precision": True,
}

# airbench94's hyperparameters (Jordan 2024) rescaled to batch 256 and run longer, to make up for
# what the CPU build leaves out (GELU, lookahead); epochs and the validation split are per recipe.
_AIRBENCH94 = {
    "train.batch_size": 256,
    "train.augmentation": "flip_crop",
    "train.crop_pixels": 2,
    "train.nesterov": True,
    "train.momentum": 0.85,
    "train.lr_schedule": "one_cycle",
    "train.learning_rate": 0.375,
    "train.warmup_fraction": 0.23,
    "train.lr_start_factor": 0.2,
    "train.lr_end_factor": 0.07,
    "train.weight_decay": 0.0089,
    "train.label_smoothing": 0.2,
    "train.mixed_precision": True,
    "export.test_time_augmentation": "flip_translate",
}


def _gate(floor: float) -> dict[str, float]:
    """A recipe's quality gate: a floor for accuracy and weighted F1, just below its measured results."""
    return {"gate.min_accuracy": floor, "gate.min_weighted_f1": floor}


RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "reference_cnn": {
        # The published study: every default in job/config/settings.py is its recipe.
        "study": {},
        # The study's figures in at most 10 epochs (measured 0.7646 / 0.7624; its gate is the study's).
        "fast": {**_MODERN_CNN, "train.epochs": 10, "train.crop_pixels": 2, "train.patience": 10},
        # The whole pipeline in about a minute, to see every artifact before a real run: 3 one-cycle epochs on
        # 4,000 training images, 1,000 test images, published under its own name so it never mixes with real
        # models. Measured 0.3370 accuracy, 0.3239 weighted F1 (chance is 0.1), gated at 0.25.
        "smoke": {
            "data.train_limit": 4000, "data.test_limit": 1000, "train.epochs": 3, "train.batch_size": 64,
            "train.lr_schedule": "one_cycle", "train.learning_rate": 0.05, "train.nesterov": True, "train.label_smoothing": 0.1,
            "publish.model_name": "cifar10-cnn-smoke", **_gate(0.25),
        },  # fmt: skip
        # The same CNN past 80 % (measured 0.8257 accuracy, 0.8257 weighted F1: README), gated there.
        "best": {**_MODERN_CNN, "train.epochs": 40, "train.crop_pixels": 4, "train.patience": 40, **_gate(0.80)},
    },
    "airbench": {
        # The 60-minute goal's recipe. Measured: 90.43 % ± 0.08 test accuracy over two seeds (six-view
        # TTA), 39-46 minutes on 2 CPU cores, below the 94 % the paper reports on the canonical files
        # (README: what the shared rebuild's JPEG pixels cost, measured).
        "standard": {**_AIRBENCH94, "data.validation_fraction": 0.1, "train.epochs": 18, "train.patience": 18, **_gate(0.89)},
        # The 90-minute floor's recipe: 32 epochs on 49,000 images (2 % validation; the one-cycle
        # schedule makes the last epoch the best, so a small validation split costs no choice).
        # Measured: 91.16 % / 0.9114 in 68 minutes, the 93 % floor not reached (README says why).
        "long": {**_AIRBENCH94, "data.validation_fraction": 0.02, "train.epochs": 32, "train.patience": 32, **_gate(0.90)},
        # The one-hour goal's recipe: airbench95's widths (128/384/384) and learning rate (0.87x airbench94's),
        # alternating flips, lookahead, 19 epochs on 49,000 images, the last epoch kept. Two test-time views, not six:
        # measured on two trained seeds, the four shifted views add at most 0.02 points and cost a third of the hour's
        # measurement time, which pays for the 19th epoch. Results: docs/pages/recipes.md.
        "wide": {
            **_AIRBENCH94, "model.widths": [128, 384, 384], "train.learning_rate": 0.326, "train.alternating_flip": True,
            "train.lookahead_decay": 0.95**5, "data.validation_fraction": 0.02, "train.epochs": 19, "train.keep": "last",
            "export.test_time_augmentation": "flip", **_gate(0.91),
        },  # fmt: skip
    },
}
DEFAULT_RECIPE = {"reference_cnn": "study", "airbench": "standard"}


def recipe_names(architecture: str) -> list[str]:
    return [DEFAULT, *RECIPES.get(architecture, {})]


def recipe_summary() -> str:
    """Every architecture's recipes, its own first, for help texts: `reference_cnn: study, fast, best; airbench: ...`."""
    return "; ".join(f"{architecture}: {', '.join(recipes)}" for architecture, recipes in RECIPES.items())


def recipe_defaults(architecture: str, recipe: str) -> Mapping[str, Any] | None:
    """The dotted config defaults of `recipe` for `architecture`; None when there is no such recipe."""
    recipes = RECIPES.get(architecture)
    if recipes is None:
        return None
    return recipes.get(DEFAULT_RECIPE[architecture] if recipe == DEFAULT else recipe)
