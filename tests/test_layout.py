"""The package's layout rules (docs/architecture.md), read from the source: which stage may import
which, where single definitions live, and how long a function may grow."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "sdetalk_jax"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 600


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_modules(path: pathlib.Path) -> set[str]:
    """Every sdetalk_jax module that `path` imports, at the top or inside a function."""
    found = set()
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    )
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import module` imports the module; `from module import name` the module.
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("sdetalk_jax."):  # the bare package's __init__ holds nothing
                found.add(name)
    return found


GRAPH = {name: imported_modules(path) for name, path in MODULES.items()}


def closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        for child in GRAPH.get(current, ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def test_the_import_graph_is_read():
    # The rules below would pass vacuously on an empty graph.
    assert "sdetalk_jax.checkpoint" in closure("sdetalk_jax.train")
    assert "sdetalk_jax.models.sdetalk" in closure("sdetalk_jax.inference")
    assert "sdetalk_jax.data.synthetic" in GRAPH["sdetalk_jax.data.synthetic.__main__"]


def test_training_does_not_import_inference_or_outputs():
    reached = closure("sdetalk_jax.train")
    for forbidden in ("inference", "evaluate", "animate", "figures", "render"):
        assert f"sdetalk_jax.{forbidden}" not in reached, forbidden


def test_nothing_outside_the_generator_imports_it():
    generator = "sdetalk_jax.data.synthetic"
    for module, imports in GRAPH.items():
        if module == generator or module.startswith(generator + "."):
            continue
        bad = sorted(i for i in imports if i == generator or i.startswith(generator + "."))
        assert not bad, f"{module} imports {bad}; run the generator as a program instead"


# Lower stages know nothing of the higher ones (audio -> data -> models -> losses -> step/loop).
LAYERS = {
    "sdetalk_jax.audio": set(),
    "sdetalk_jax.fileio": set(),
    "sdetalk_jax.metrics": set(),
    "sdetalk_jax.cli": set(),
    "sdetalk_jax.models": {
        "sdetalk_jax.audio",
        "sdetalk_jax.fileio",
        "sdetalk_jax.cli",
        "sdetalk_jax.models",
    },  # fmt: skip
    "sdetalk_jax.data": {
        "sdetalk_jax.audio",
        "sdetalk_jax.fileio",
        "sdetalk_jax.metrics",
        "sdetalk_jax.cli",
        "sdetalk_jax.data",
    },  # fmt: skip
    # the losses read the shared operations and the vCLUB pairs, never the networks
    "sdetalk_jax.losses": {"sdetalk_jax.models.ops", "sdetalk_jax.models.vclub"},
    "sdetalk_jax.run_config": set(),
    # inside models/: the settings, then the operations and layers, then the parts, then G and D
    "sdetalk_jax.models.config": set(),
    "sdetalk_jax.models.ops": set(),
    "sdetalk_jax.models.layers": set(),
    "sdetalk_jax.models.vclub": {"sdetalk_jax.models.config"},
    "sdetalk_jax.models.head_motion": {"sdetalk_jax.models.config", "sdetalk_jax.models.ops"},
    "sdetalk_jax.models.emotion": {
        "sdetalk_jax.models.config",
        "sdetalk_jax.models.layers",
        "sdetalk_jax.models.ops",
    },  # fmt: skip
    "sdetalk_jax.models.sdetalk": {
        "sdetalk_jax.models.config",
        "sdetalk_jax.models.emotion",
        "sdetalk_jax.models.head_motion",
        "sdetalk_jax.models.layers",
        "sdetalk_jax.models.ops",
    },  # fmt: skip
}


@pytest.mark.parametrize("stage", sorted(LAYERS))
def test_lower_stages_do_not_import_higher_ones(stage):
    allowed = LAYERS[stage]
    for module, imports in GRAPH.items():
        if module != stage and not module.startswith(stage + "."):
            continue
        for imported in imports:
            # `from package import module` also names the package, whose __init__ holds nothing
            if imported == module or module.startswith(imported + "."):
                continue
            assert any(imported == a or imported.startswith(a + ".") for a in allowed), (
                f"{module} imports {imported}"
            )


def test_the_step_does_not_import_the_loop():
    assert "sdetalk_jax.train" not in closure("sdetalk_jax.train_step")
    assert "sdetalk_jax.train_step" in GRAPH["sdetalk_jax.train"]


def test_no_module_is_longer_than_the_limit():
    long = {
        name: len(path.read_text().splitlines())
        for name, path in MODULES.items()
        if len(path.read_text().splitlines()) > MAX_MODULE_LINES
    }
    assert not long, long


def test_no_function_is_longer_than_the_limit():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert not long, long


def source_containing(text: str) -> list[str]:
    return sorted(name for name, path in MODULES.items() if text in path.read_text())


def test_single_definitions():
    # Eq. 4 is written once (models.ops.pose_faces), and so is the identity one-hot of a model
    # batch (data.pipeline.model_batch; the networks' dummy batch for initialisation aside).
    assert source_containing('"bnij,bniv->bnjv"') == ["sdetalk_jax.models.ops"]
    assert source_containing('["subject_onehot"] =') == ["sdetalk_jax.data.pipeline"]
    # The networks' sizes from a run's config and data: SDETalkConfig.for_run, for training and
    # inference alike.
    assert source_containing("motion_unit=1.0 / ") == ["sdetalk_jax.models.config"]
    # Old runs are brought to today's fields in one place: nothing else reads a saved config's
    # field with a fallback.
    assert source_containing("upgrade_run_config(") == [
        "sdetalk_jax.checkpoint",
        "sdetalk_jax.run_config",
    ]
    assert source_containing('.get("lr_schedule"') == []
    assert source_containing('_seed", -1)') == []


def test_every_test_named_in_the_docs_exists():
    """docs/reliability.md names the test of each failure mode: each must be a real test."""
    import re

    docs = PACKAGE.parent / "docs"
    text = (docs / "reliability.md").read_text()
    named = re.findall(r"`(tests/test_\w+\.py)::(\w+)`", text)
    assert len(named) > 20
    current = None
    for file_part, name in re.findall(r"`(?:(tests/test_\w+\.py))?::(\w+)`", text):
        current = file_part or current
        source = (PACKAGE.parent / current).read_text()
        assert f"def {name}(" in source, f"{current}::{name}"
