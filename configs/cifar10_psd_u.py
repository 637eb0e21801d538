"""CIFAR-10, progressive self-distillation, uniform u (PSD-U); the published image settings (`docs/method.md` §5)."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.cifar10(variant), "psd_u")
