"""Flow-map networks.

Each is a flax module called as `module(s, t, x, train=False) -> v_{s,t}(x)` with s, t of shape
[B] and x of shape [B, ...]; a module with `learn_weight = True` also has `log_weight(s, t) -> [B]`.
A conditional module (`num_classes` > 0) also takes `label=` [B] int (num_classes is the null
label), and one with `learn_guidance` takes `guidance=` [B], the scale w (`docs/method.md` §9).
`flow_map.FlowMapModel` derives everything else from that.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import ml_collections

from flow_maps.networks.condition import check_condition  # noqa: F401  (the package's API)

NETWORKS = ("mlp", "unet")


class Network(NamedTuple):
  module: nn.Module
  # Applied to the parameters after every optimiser step (the UNet's forced weight
  # normalisation); None for networks without one.
  project: Optional[Callable[[Any], Any]] = None
  # Draws the initial parameters on the host from a seed, where compiling the module's own
  # initialiser would be slow (the UNet on CPU); None: `FlowMapModel.init`.
  host_init: Optional[Callable[[int], Any]] = None


def build_network(config: ml_collections.ConfigDict, data_shape: tuple[int, ...]) -> Network:
  """The configured network for samples of `data_shape`."""
  model = config.model
  sigma0 = config.interpolant.sigma0
  learn_weight = config.objective.weighting == "learned"  # the head exists only when it is used
  from flow_maps import data as data_lib
  num_classes = data_lib.num_classes(config)
  learn_guidance = bool(config.get("guidance", {}).get("learned", False))
  if model.name == "mlp":
    from flow_maps.networks import mlp
    out_dim = 1
    for d in data_shape:
      out_dim *= d
    return Network(mlp.MLP(out_dim=out_dim, width=model.width, depth=model.depth, sigma0=sigma0,
                           learn_weight=learn_weight, num_classes=num_classes,
                           learn_guidance=learn_guidance))
  if model.name == "unet":
    from flow_maps.networks import unet
    module = unet.unet_from_config(model, data_shape, sigma0, learn_weight, num_classes,
                                   learn_guidance)
    return Network(module, unet.normalize_weights, lambda seed: unet.init_params(module, seed))
  raise ValueError(f"model.name: unknown network {model.name!r}; allowed: {NETWORKS}")
