"""The package's layers: imports point down only, the math and the modeling files stand alone, and
every registered architecture is complete."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from flatten_hf.adapters import get_adapter, layer_parameters, registered_adapters

from .tiny import ARCHS, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module named by an import in `path`, relative imports resolved."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _internal_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in (ROOT / "flatten_hf").rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def test_the_import_graph_has_no_cycle():
    graph = _internal_graph()
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, trail + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_math_imports_nothing_above_it():
    for path in (ROOT / "flatten_hf" / "ops").glob("*.py"):
        internal = {m for m in _imports(path) if m.startswith("flatten_hf")}
        assert all(m.startswith("flatten_hf.ops") for m in internal), (path.name, internal)


def test_modeling_files_import_only_torch_and_transformers():
    for path in (ROOT / "modeling").glob("*.py"):
        outside = {m.split(".")[0] for m in _imports(path)} - {"torch", "transformers", "__future__", "copy",
                                                                 "typing", "modeling"}  # modeling: its sibling file
        assert not outside, (path.name, outside)


def test_every_supported_architecture_has_a_tiny_test_model():
    assert {a.model_type for a in registered_adapters()} == set(ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_adapters_count_parameters_like_the_stock_layer(arch):
    config = tiny_config(arch)
    adapter = get_adapter(arch)
    stock = adapter.decoder_layer_class(config, 0)
    assert layer_parameters(config, 4, 2, 48) == sum(p.numel() for p in stock.parameters())
    # a width pruned to nothing is counted by the affine extrapolation, the MLP alone
    assert layer_parameters(config, 0, 0, 48) == sum(p.numel() for n, p in stock.named_parameters()
                                                     if not n.startswith("self_attn."))
    assert get_adapter(adapter.flatten_config_class.model_type) is adapter
