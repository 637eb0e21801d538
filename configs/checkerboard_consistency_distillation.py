"""Checkerboard, Continuous-time consistency distillation: single-time Eulerian driven by a pretrained flow (--config.objective.pretrained=DIR); the preset `consistency_distillation` of `config_defaults.PRESETS` (`docs/method.md` §8)."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.checkerboard(variant), "consistency_distillation")
