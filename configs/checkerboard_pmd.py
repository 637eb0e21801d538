"""Checkerboard, Progressive map distillation: PSD-U with a pretrained velocity on the diagonal (--config.objective.pretrained=DIR); the preset `pmd` of `config_defaults.PRESETS` (`docs/method.md` §8)."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.checkerboard(variant), "pmd")
