"""Train-or-load cache for models that later notebooks start from.

A :class:`Recipe` says how to build a model from a config, how to train it (with the same code
the notebooks teach) and which config each profile uses. :func:`get` returns the cached model
when its recipe name, recipe version, config and course_lib version all match, and otherwise
trains it and caches it (safetensors weights + a JSON sidecar, written atomically, loaded
without unpickling). Every notebook can therefore run alone, in any order.

What the cache guarantees:

* **Verified.** The sidecar holds the sha256 of the weights file; a load checks it, the sidecar's
  recipe and key, the tensors' names and shapes, and that every floating tensor is finite. A
  damaged or mismatched artifact (flipped bytes, truncation, NaN, a broken sidecar, weights without
  a sidecar) is trained again with a one-line warning naming the file and the reason.
* **Once.** Concurrent callers (two notebooks, two processes) take a file lock (``filelock``)
  beside the artifact: one trains, the others wait and load the same files.
* **Reproducible.** Recipes seed before they build (:mod:`course_lib.tuning.recipes`), so a fresh
  process trains the same weights for the same recipe, profile and thread count.
* **Or refused.** Where the cache cannot be written (a read-only class cache), the error names the
  folder and how to choose another (``COURSE_ARTIFACT_DIR``).

The cache lives in ``COURSE_ARTIFACT_DIR`` (default ``<COURSE_DATA_DIR or ~/.cache/llm-course>/artifacts``).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from . import __version__
from . import profile as _profile
from .data import cache_dir, sha256_of
from .files import atomic_write


class ArtifactError(RuntimeError):
    """The cache cannot hold this artifact (e.g. it is read-only); the message says what to do."""


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
    try:
        weights.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(weights) + ".lock")
        lock.acquire()
    except OSError as e:
        raise ArtifactError(_unwritable(weights.parent, e)) from None
    try:
        if not retrain:
            problem, loaded = _load(recipe, config, k, weights, sidecar)
            if loaded is not None:
                model, meta = loaded
                return model.to(device).eval(), meta
            if problem:
                warnings.warn(f"artifact {weights}: {problem}; training it again", RuntimeWarning, stacklevel=2)
        _profile.require_runnable(prof)  # loading a cached gpu artifact is fine; training one needs CUDA
        model = recipe.build(config)
        meta: dict[str, Any] = dict(recipe.train(model, config) or {})
        meta.update(recipe=name, version=recipe.version, profile=prof, config=config, key=k)
        model = model.cpu()
        try:
            atomic_write(weights, lambda tmp: save_model(model, tmp))
            meta["sha256"] = sha256_of(weights)
            atomic_write(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
        except OSError as e:
            raise ArtifactError(_unwritable(weights.parent, e)) from None
        return model.to(device).eval(), meta
    finally:
        lock.release()


def _unwritable(folder: Path, e: OSError) -> str:
    return (f"cannot write the artifact cache {folder} ({type(e).__name__}: {e}); make it writable, or set "
            f"COURSE_ARTIFACT_DIR to a folder you can write (e.g. export COURSE_ARTIFACT_DIR=~/llm-course-artifacts)")


def _load(recipe: Recipe, config: dict, k: str, weights: Path, sidecar: Path
          ) -> tuple[str | None, tuple[nn.Module, dict] | None]:
    """(why the cached copy cannot be used, or None; the loaded (model, meta), or None)."""
    if not weights.exists() and not sidecar.exists():
        return None, None
    if not weights.exists() or not sidecar.exists():
        return f"{'the weights' if not weights.exists() else 'the sidecar ' + sidecar.name} is missing", None
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"its sidecar {sidecar.name} is unreadable ({type(e).__name__}: {e})", None
    if not isinstance(meta, dict) or meta.get("recipe") != recipe.name or meta.get("key") != k:
        return f"its sidecar {sidecar.name} describes another artifact", None
    if not isinstance(meta.get("sha256"), str):
        return f"its sidecar {sidecar.name} records no sha256 of the weights", None
    digest = sha256_of(weights)
    if digest != meta["sha256"]:
        return f"the weights' sha256 {digest[:12]}... is not the recorded {meta['sha256'][:12]}... (damaged)", None
    model = recipe.build(config)
    try:
        load_model(model, str(weights), strict=True, device="cpu")  # tied tensors are stored once
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        return f"the weights do not load into the recipe's model ({type(e).__name__}: {str(e)[:200]})", None
    bad = sorted(n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all())
    if bad:
        return f"tensors {bad[:3]} hold NaN or inf", None
    return None, (model, meta)
