"""Checkerboard, Discrete-time consistency training (iCT, Song & Dhariwal 2023): the finite-difference Eulerian residual on the Karras grid, pseudo-Huber; the preset `consistency_training_discrete` of `config_defaults.PRESETS` (`docs/method.md` §8)."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.checkerboard(variant), "consistency_training_discrete")
