"""Checkerboard, progressive self-distillation with u uniform between s and t (PSD-U)."""

from flow_maps import config_defaults


def get_config(variant=None):
  config = config_defaults.checkerboard(variant)
  config.objective.name = "psd"
  config.objective.psd_h = "uniform"
  config.objective.stop_gradient = "teacher"
  return config
