"""Checkerboard, Shortcut models (Frans et al. 2024): progressive (PSD-M) on dyadic gaps with an EMA teacher; the preset `shortcut` of `config_defaults.PRESETS` (`docs/method.md` §8)."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.checkerboard(variant), "shortcut")
