"""Checkerboard, MeanFlow (Geng et al. 2025): Eulerian residual, conditional velocity, gradient through v only, logit-normal times, adaptive weight; the preset `meanflow` of `config_defaults.PRESETS` (`docs/method.md` §8)."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.checkerboard(variant), "meanflow")
