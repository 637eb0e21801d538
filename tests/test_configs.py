"""Every experiment file in configs/ loads in every variant and passes validation, and the image
configs carry the published settings of `docs/method.md` §5 (no compilation: milliseconds)."""

from __future__ import annotations

import glob
import importlib.util
import os
import re

import pytest

from flow_maps import config_defaults, validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def load(path: str, variant: str | None = None):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def test_there_is_a_checkerboard_config_for_every_preset():
  names = {os.path.basename(p)[:-3] for p in CONFIG_FILES}
  assert {f"checkerboard_{p}" for p in config_defaults.PRESETS} <= names
  for preset in ("meanflow", "shortcut", "consistency_training"):
    assert f"cifar10_{preset}" in names


def test_there_are_configs_for_every_published_image_objective():
  names = {os.path.basename(p)[:-3] for p in CONFIG_FILES}
  for dataset in ("cifar10", "celeba"):
    for objective in ("lsd", "esd", "psd_m", "psd_u"):
      assert f"{dataset}_{objective}" in names
  assert "mnist_lsd" in names and "digits_lsd" in names


@pytest.mark.parametrize("variant", [None, "demo", "smoke"])
@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.basename(p)[:-3])
def test_every_config_and_variant_validates(path, variant):
  config = load(path, variant)
  if config.objective.velocity == "pretrained":  # distillation: the teacher run is the user's
    with pytest.raises(validation.ConfigError, match="objective.pretrained: velocity='pretrained' "
                       "needs a finished run's workdir"):
      validation.validate(config)
    config.objective.pretrained = "/runs/teacher"  # validation does not read it; loading does
  validation.validate(config)
  name = os.path.basename(path)[:-3].removesuffix("_guided").removesuffix("_conditional")
  presets = [o for o in config_defaults.PRESETS if name.endswith("_" + o)]
  preset = max(presets, key=len)  # consistency_training_discrete ends with neither other name
  for field, value in config_defaults.PRESETS[preset].items():
    section, key = field.split(".") if "." in field else ("objective", field)
    assert config[section][key] == value, (path, field)

def test_unknown_variant_names_the_allowed_ones():
  with pytest.raises(ValueError, match="unknown config variant 'tiny'.*demo"):
    load(os.path.join(ROOT, "configs", "mnist_lsd.py"), "tiny")


@pytest.mark.parametrize("name, preset", [("cifar10", "cifar10"), ("celeba", "celeba64")])
@pytest.mark.parametrize("objective", ["lsd", "esd", "psd_m", "psd_u"])
def test_image_configs_carry_the_published_settings(name, preset, objective):
  config = load(os.path.join(ROOT, "configs", f"{name}_{objective}.py"))
  assert config.model.name == "unet" and config.model.preset == preset
  assert config.objective.weighting == "learned"
  assert config.interpolant.sigma0 == 0.5
  assert (config.optim.name, config.optim.learning_rate, config.optim.clip_norm) == \
      ("radam", 1e-2, 1.0)
  assert config.optim.decay_start == 35_000 and config.train.num_steps == 400_000
  assert config.train.batch_size == 512 and tuple(config.train.ema_decays) == (0.999, 0.9999)
  assert config.eval.params == "ema_0.9999" and config.eval.num_samples == 50_000
  assert tuple(config.eval.steps) == (1, 2, 4, 8, 16)
  assert config.model.compute_dtype == ("bfloat16" if name == "celeba" else "float32")
  assert config.data.name == ("celeba64" if name == "celeba" else "cifar10")


@pytest.mark.parametrize("field, message", [
    ("objective.name", "objective.name: no such field (misspelt, or renamed since); fields of "
                       "objective: adaptive_c"),
    ("optim.lr", "optim.lr: no such field"),
    ("guidance.scale", "guidance.scale: no such field"),
])
def test_a_field_the_defaults_lack_is_refused_in_closed_sections(field, message):
  """A field set in code (not a flag: flags are checked on parsing) that common() does not
  define is refused in the sections common() defines whole: `objective.name`, the field renamed
  to `objective.residual`, would otherwise be ignored and train another objective."""
  config = load(os.path.join(ROOT, "configs", "checkerboard_lsd.py"), "smoke")
  section, name = field.split(".")
  config[section][name] = "x"
  with pytest.raises(validation.ConfigError, match=re.escape(message)):
    validation.validate(config)
