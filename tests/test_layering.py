"""The package's layering (`flow_maps/run.py`): the training loop takes its evaluators as
arguments, so no module of flow_maps imports, directly or through others, a module that imports
it back. Every import counts, those inside functions too (a local import hides a cycle, it does
not remove it)."""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "flow_maps"


def _modules(root: str = ROOT) -> dict[str, str]:
  """Module name -> path of every module of the package."""
  out = {}
  for directory, _, files in os.walk(os.path.join(root, PACKAGE)):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(directory, f), root)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(directory, f)
  return out


def import_graph(root: str = ROOT) -> dict[str, set[str]]:
  """Module -> the package modules it imports anywhere in its source. `from a import b` counts
  as importing a.b when that is a module, else a; a relative import is resolved."""
  modules = _modules(root)
  graph = {}
  for name, path in modules.items():
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    deps = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if isinstance(node, ast.Import):
        deps.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = package.split(".")
          parent = ".".join(parts[:len(parts) - node.level + 1])
          base = f"{parent}.{base}" if base else parent
        for a in node.names:
          deps.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    graph[name] = {d for d in deps if d in modules and d != name}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
  """One cycle [a, b, ..., a] of the directed graph, or [] if it has none."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    state[node] = 2
    path.pop()
    return []

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return []


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_package_has_no_import_cycle():
  graph = import_graph()
  assert "flow_maps.train" in graph and "flow_maps.evaluation.run_eval" in graph
  assert "flow_maps.train" in graph["flow_maps.evaluation.run_eval"]  # the walker sees imports
  cycle = find_cycle(graph)
  assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_training_loop_does_not_reach_the_evaluation_layer():
  graph = import_graph()
  seen, todo = set(), ["flow_maps.train"]
  while todo:
    m = todo.pop()
    if m not in seen:
      seen.add(m)
      todo.extend(graph[m])
  assert not {m for m in seen if m.startswith("flow_maps.evaluation")}


def test_the_evaluation_layer_raises_no_config_errors():
  """Configs are checked once, before anything runs (`validation.py`, called by run.py): no
  module of flow_maps.evaluation imports the config check, so none can raise its errors."""
  graph = import_graph()
  offenders = sorted(m for m, deps in graph.items()
                     if m.startswith(f"{PACKAGE}.evaluation") and f"{PACKAGE}.validation" in deps)
  assert offenders == []
  assert f"{PACKAGE}.validation" in graph[f"{PACKAGE}.run"]  # the finder sees such an import
