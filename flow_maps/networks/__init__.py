"""Flow-map networks. Each is a flax module called as `module(s, t, x, train=False) -> v_{s,t}(x)`
with s, t of shape [B] and x of shape [B, ...]; a module with `learn_weight = True` also has
`log_weight(s, t) -> [B]`. `flow_map.FlowMapModel` derives everything else from that."""
