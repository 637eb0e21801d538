"""Checkerboard, Continuous-time consistency training (sCM, Lu & Song 2024): single-time Eulerian, conditional velocity, tangent normalisation and warm-up, TrigFlow; the preset `consistency_training` of `config_defaults.PRESETS` (`docs/method.md` §8)."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.checkerboard(variant), "consistency_training")
