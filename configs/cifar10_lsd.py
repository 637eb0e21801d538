"""CIFAR-10, Lagrangian self-distillation (LSD), teacher stop-gradient; the published image settings (`docs/method.md` §5)."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.cifar10(variant), "lsd")
