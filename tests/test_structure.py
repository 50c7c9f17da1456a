"""The code's shape, as the layout issue set it: no module reaches into another's private attributes, resolved
settings cannot be changed, and functions stay short (the few still over 80 lines are listed, and the list may
only shrink)."""

import ast
import dataclasses
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "turboseq"

# private names of other libraries that turboseq uses on purpose (no public equivalent)
FOREIGN_PRIVATE = (
    "torch.ops.mkldnn._",  # oneDNN's prepacked linear, its weight reorder and bf16 probe
    "torch._make_per_tensor_quantized_tensor",  # fbgemm's int8 weights from stored values (scale 1)
    "torch._empty_per_channel_affine_quantized",  # ... and quantized a block of rows at a time while loading
    "torch._inductor",  # AOTInductor's compile options for `export --compile`
    "torch.export.pt2_archive._package",  # the .pt2 reader and writer
    "os._exit",  # a second signal exits at once
    "request._body",  # starlette reads a consumed body from here
)


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"))


def private_accesses(tree: ast.AST) -> list[str]:
    """``x._name`` where ``x`` is not ``self`` or ``cls`` (dunders aside)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            text = ast.unparse(node)
            if not text.startswith(FOREIGN_PRIVATE):
                found.append(f"line {node.lineno}: {text}")
    return found


def test_no_module_reaches_into_another_modules_private_attributes():
    problems = [f"{path.relative_to(SRC)} {hit}" for path, tree in _modules() for hit in private_accesses(tree)]
    assert not problems, "\n".join(problems)


def test_the_private_access_check_can_fail():
    tree = ast.parse("def f(model):\n    return model._encode(1), self._fine, cls._fine, model.__class__")
    assert private_accesses(tree) == ["line 2: model._encode"]


def test_functions_stay_short():
    long = set()
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.add(f"{path.relative_to(SRC)}:{node.name}")
    assert not long, f"functions over 80 lines (statements, docstring included): {sorted(long)}"


def optional_parameter_tests(tree: ast.AST) -> list[str]:
    """``p is None`` / ``p is not None`` where ``p`` is a parameter of the function it is in: an optional side
    channel that the loop branches on."""
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        params = {a.arg for a in func.args.args + func.args.kwonlyargs}
        for node in ast.walk(func):
            if (
                isinstance(node, ast.Compare)
                and isinstance(node.left, ast.Name)
                and node.left.id in params
                and any(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops)
            ):
                found.append(f"{func.name}: {ast.unparse(node)}")
    return found


def test_the_search_loops_have_no_optional_side_channels():
    tree = ast.parse((SRC / "generation" / "search.py").read_text(encoding="utf-8"))
    assert optional_parameter_tests(tree) == []
    probe = ast.parse("def loop(step, trace=None):\n    if trace is not None:\n        trace.record()")
    assert optional_parameter_tests(probe) == ["loop: trace is not None"]


def test_resolved_settings_are_frozen(marian_one):
    model, _ = marian_one
    s = model.settings(num_beams=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.num_beams = 8
    assert dataclasses.replace(s, num_beams=8).num_beams == 8 and s.num_beams == 4
