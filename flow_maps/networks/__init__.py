"""Flow-map networks.

Each is a flax module called as `module(s, t, x, train=False) -> v_{s,t}(x)` with s, t of shape
[B] and x of shape [B, ...]; a module with `learn_weight = True` also has `log_weight(s, t) -> [B]`.
`flow_map.FlowMapModel` derives everything else from that.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import ml_collections

NETWORKS = ("mlp", "unet")


def build_network(config: ml_collections.ConfigDict, data_shape: tuple[int, ...]
                  ) -> tuple[nn.Module, Optional[Callable[[Any], Any]]]:
  """The configured network for samples of `data_shape`, and the projection applied to its
  parameters after every optimiser step (forced weight normalisation for the UNet; None for
  networks without one)."""
  model = config.model
  sigma0 = config.interpolant.sigma0
  if model.name == "mlp":
    from flow_maps.networks import mlp
    out_dim = 1
    for d in data_shape:
      out_dim *= d
    return mlp.MLP(out_dim=out_dim, width=model.width, depth=model.depth, sigma0=sigma0,
                   learn_weight=model.learn_weight), None
  if model.name == "unet":
    from flow_maps.networks import unet
    return unet.unet_from_config(model, data_shape, sigma0), unet.normalize_weights
  raise ValueError(f"model.name: unknown network {model.name!r}; allowed: {NETWORKS}")
