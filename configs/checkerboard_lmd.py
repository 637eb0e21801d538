"""Checkerboard, Lagrangian map distillation (flow map matching): LSD's residual with a pretrained velocity (--config.objective.pretrained=DIR); the preset `lmd` of `config_defaults.PRESETS` (`docs/method.md` §8)."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.checkerboard(variant), "lmd")
