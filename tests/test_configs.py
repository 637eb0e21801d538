"""Every experiment file in configs/ loads in every variant and passes validation, the image
configs carry the published settings of `docs/method.md` §5, every dataset file takes its typed
arguments (`config_defaults.parse_arg`) and gives exactly the config of each per-pair file, and
the argument parser refuses what it does not know by name (no compilation: milliseconds)."""

from __future__ import annotations

import glob
import importlib.util
import os
import re

import pytest

from flow_maps import cli, config_defaults, validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One file per dataset, taking `key=value,...` arguments; every other file is one published
# pair (dataset, preset), taking a variant.
DATASET_FILES = {name: os.path.join(ROOT, "configs", f"{name}.py") for name in
                 ("checkerboard", "gaussian_mixture", "cifar10", "celeba", "mnist", "digits",
                  "mixture_nd")}
CONFIG_FILES = sorted(set(glob.glob(os.path.join(ROOT, "configs", "*.py")))
                      - set(DATASET_FILES.values()))


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
  assert tuple(config.eval.sampling_steps) == (1, 2, 4, 8, 16)
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


# ------------------------------------------------------------------------------------------------
# Dataset files: `configs/<dataset>.py:preset=...,variant=...`.


def dataset_form(path: str) -> tuple[str, str]:
  """The dataset file and argument that give the config of the per-pair file `path`."""
  name = os.path.basename(path)[:-3]
  dataset = max((d for d in DATASET_FILES if name.startswith(d + "_")), key=len)
  rest = name[len(dataset) + 1:]
  guidance = ""
  for suffix in ("_guided", "_conditional"):
    if rest.endswith(suffix):
      rest = rest[:-len(suffix)]
      # MeanFlow's own guidance; flow matching's conditional teacher learns no guidance.
      kind = {"meanflow": "fixed", "flow_matching": "labels"}.get(rest, "learned")
      guidance = f",guidance={kind if dataset == 'gaussian_mixture' else 'learned'}"
  assert rest in config_defaults.PRESETS, name
  return DATASET_FILES[dataset], f"preset={rest}{guidance}"


@pytest.mark.parametrize("variant", [None, "demo", "smoke"])
@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.basename(p)[:-3])
def test_every_per_pair_file_equals_its_dataset_form(path, variant):
  dataset_file, arg = dataset_form(path)
  new = load(dataset_file, f"{arg},variant={variant or ''}")
  assert new.to_dict() == load(path, variant).to_dict(), (dataset_file, arg)


@pytest.mark.parametrize("dataset, arg, expected", [
    ("checkerboard", None, {"objective.residual": "lagrangian", "train.num_steps": 250_000}),
    ("checkerboard", "preset=psd_m,variant=demo",
     {"objective.psd_h": "midpoint", "train.num_steps": 15_000}),
    ("checkerboard", "variant=smoke, preset=esd, guidance=learned",
     {"objective.stop_gradient": "full", "guidance.learned": True, "train.num_steps": 20}),
    ("checkerboard", "preset=consistency_distillation",
     {"objective.velocity": "pretrained", "eval.sampler": "consistency"}),
    ("gaussian_mixture", "preset=esd,variant=demo",
     {"objective.stop_gradient": "full", "data.std": 0.1}),
    ("gaussian_mixture", "preset=meanflow,guidance=fixed,variant=smoke",
     {"guidance.fixed_omega": 1.5, "data.std": 0.25, "eval.guidance": (2.0,)}),
    ("gaussian_mixture", "preset=psd_u,guidance=learned",
     {"guidance.learned": True, "interpolant.sigma0": 0.75}),
    ("cifar10", "preset=psd_m,variant=demo",
     {"model.preset": "cifar10", "objective.residual": "progressive", "train.batch_size": 128}),
    ("cifar10", "preset=shortcut,variant=smoke", {"objective.times": "dyadic",
                                                 "model.preset": "tiny"}),
    ("celeba", "preset=esd", {"data.name": "celeba64", "model.compute_dtype": "bfloat16"}),
    ("celeba", "preset=consistency_training,variant=demo",
     {"interpolant.name": "trigonometric", "train.num_steps": 50_000}),
    ("mnist", "guidance=learned,variant=smoke", {"data.conditional": True,
                                                 "data.name": "mnist5k"}),
    ("mnist", "preset=esd,variant=demo", {"train.num_steps": 500, "data.conditional": False}),
    ("digits", "preset=emd,variant=smoke", {"objective.velocity": "pretrained",
                                            "data.name": "digits"}),
    ("digits", "variant=demo", {"model.model_channels": 16}),
    ("mixture_nd", "preset=psd_m,dim=32,separation=4,component_std=0.5,variant=smoke",
     {"data.dim": 32, "data.separation": 4.0, "data.component_std": 0.5,
      "objective.psd_h": "midpoint"}),
    ("mixture_nd", "variant=smoke", {"data.dim": 4, "data.separation": 2.0}),
])
def test_dataset_files_take_typed_arguments_and_validate(dataset, arg, expected):
  config = load(DATASET_FILES[dataset], arg)
  for field, value in expected.items():
    section, key = field.split(".")
    assert config[section][key] == value, field
  if config.objective.velocity == "pretrained":
    config.objective.pretrained = "/runs/teacher"  # validation does not read it; loading does
  validation.validate(config)


def test_every_dataset_file_gives_the_published_default():
  assert {os.path.basename(dataset_form(p)[0])[:-3] for p in CONFIG_FILES} == set(DATASET_FILES)
  for dataset, path in DATASET_FILES.items():
    pair = {"celeba": "celeba_lsd", "mnist": "mnist_lsd"}.get(dataset, f"{dataset}_lsd")
    assert load(path).to_dict() == load(os.path.join(ROOT, "configs", f"{pair}.py")).to_dict()


@pytest.mark.parametrize("arg, message", [
    ("presett=lsd", "config argument 'presett': unknown key; allowed: preset='lsd', "
                    "variant='', guidance='none'"),
    ("preset=lsdd", "config argument preset=lsdd: unknown value; allowed: 'flow_matching', "),
    ("variant=tiny", "config argument variant=tiny: unknown value; allowed: '', 'demo', 'smoke'"),
    ("guidance=fixed", "config argument guidance=fixed: unknown value; allowed: 'none', "
                       "'learned'"),
    ("preset=lsd,preset=esd", "config argument 'preset': given twice"),
    ("preset", "config argument 'preset': needs a value (preset=...)"),
    ("demo", "config argument 'demo': unknown key"),
])
def test_a_bad_dataset_argument_is_one_named_line_from_the_cli(arg, message):
  argument = f"{DATASET_FILES['checkerboard']}:{arg}"
  with pytest.raises(cli.InputError) as error:
    cli.load_config(argument)
  assert str(error.value).startswith(f"config error: {DATASET_FILES['checkerboard']}: {message}")
  assert "\n" not in str(error.value)


def test_parse_arg_reads_each_value_as_its_default_type():
  a = config_defaults.parse_arg("steps=300, lr=2e-3,name=x,flag", steps=10, lr=1.0, name="",
                                flag=False, other=True)
  assert (a.steps, a.lr, a.name, a.flag, a.other) == (300, 2e-3, "x", True, True)
  assert type(a.steps) is int and type(a.lr) is float
  assert config_defaults.parse_arg("other=false", other=True).other is False
  assert vars(config_defaults.parse_arg(None, steps=10)) == {"steps": 10}
  assert vars(config_defaults.parse_arg("", steps=10)) == {"steps": 10}
  for arg, message in [("steps=3.5", "steps=3.5: not an int"), ("lr=fast", "lr=fast: not a float"),
                       ("other=maybe", "other=maybe: not a boolean; use true or false")]:
    with pytest.raises(config_defaults.ArgumentError, match=re.escape(message)):
      config_defaults.parse_arg(arg, steps=10, lr=1.0, other=True)
  with pytest.raises(TypeError, match="must be a bool, int, float or str"):
    config_defaults.parse_arg("steps=(1,)", steps=(1, 2))
