"""Train-or-load cache for models that later notebooks start from.

A :class:`Recipe` says how to build a model from a config, how to train it (with the same code
the notebooks teach) and which config each profile uses. :func:`get` returns the cached model
when its recipe name, recipe version, config and course_lib version all match, and otherwise
trains it and caches it (safetensors weights + a JSON sidecar, written atomically, loaded
without unpickling). Every notebook can therefore run alone, in any order.

The cache lives in ``COURSE_ARTIFACT_DIR`` (default ``<COURSE_DATA_DIR or ~/.cache/llm-course>/artifacts``).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from . import __version__
from . import profile as _profile
from .data import cache_dir
from .files import atomic_write


@dataclass(frozen=True)
class Recipe:
    name: str
    version: str
    config: Callable[[str], dict]  # profile -> JSON-serialisable config
    build: Callable[[dict], nn.Module]  # config -> untrained model
    train: Callable[[nn.Module, dict], dict]  # trains in place, returns JSON-serialisable metadata


RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    RECIPES[recipe.name] = recipe
    return recipe


def artifact_dir() -> Path:
    d = os.environ.get("COURSE_ARTIFACT_DIR", "").strip()
    return Path(d).expanduser() if d else cache_dir() / "artifacts"


def key(recipe: Recipe, config: dict) -> str:
    blob = json.dumps({"name": recipe.name, "version": recipe.version, "config": config,
                       "course_lib": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def get(recipe: Recipe | str, *, profile: str | None = None, retrain: bool = False,
        device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The trained model of ``recipe`` (a :class:`Recipe`, or the name of a registered one) for
    ``profile`` and its metadata (cached). The course's recipes are in
    :mod:`course_lib.tuning.recipes`, e.g. ``artifacts.get(recipes.CHAR_GPT)``."""
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise KeyError(f"unknown artifact {recipe!r}; registered: {', '.join(sorted(RECIPES)) or '(none)'}. "
                           "The course's recipes register when course_lib.tuning.recipes is imported")
        recipe = RECIPES[recipe]
    elif not isinstance(recipe, Recipe):
        raise TypeError(f"expected a Recipe or the name of a registered one, got {type(recipe).__name__}")
    name = recipe.name
    prof = profile or _profile.name()
    config = recipe.config(prof)
    k = key(recipe, config)
    weights = artifact_dir() / f"{name}-{prof}-{k}.safetensors"
    sidecar = weights.with_suffix(".json")
    model = recipe.build(config)
    if not retrain and weights.exists() and sidecar.exists():
        meta = json.loads(sidecar.read_text())
        missing, unexpected = load_model(model, str(weights), strict=True, device="cpu")
        return model.to(device).eval(), meta
    meta: dict[str, Any] = dict(recipe.train(model, config) or {})
    meta.update(recipe=name, version=recipe.version, profile=prof, config=config, key=k)
    model = model.cpu()
    atomic_write(weights, lambda tmp: save_model(model, tmp))
    atomic_write(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    return model.to(device).eval(), meta
