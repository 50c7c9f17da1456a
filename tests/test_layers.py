"""The package's shape: layers whose imports point down (import-linter contract in pyproject.toml), no import
cycle, small modules, and a package ``__init__`` that is only the public face."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "turboseq"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(src: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=src.parent,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def test_import_contract_holds_and_catches_a_back_edge(tmp_path):
    """The contract passes on the package as it is, and fails on a copy where the runtime imports the server."""
    config = tmp_path / "pyproject.toml"
    shutil.copy(ROOT / "pyproject.toml", config)
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "turboseq", ignore=shutil.ignore_patterns("__pycache__"))
    ok = _lint_imports(src, config)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "2 kept, 0 broken" in ok.stdout
    spec = src / "turboseq" / "runtime" / "spec.py"
    spec.write_text(spec.read_text() + "\nimport turboseq.serving.app  # noqa\n")
    broken = _lint_imports(src, config)
    assert broken.returncode == 1
    assert "turboseq.runtime.spec -> turboseq.serving.app" in broken.stdout


def test_no_import_cycles():
    """No chain of imports (at any depth, lazy imports inside functions included) leads a module back to itself."""
    import grimp

    graph = grimp.build_graph("turboseq")
    modules = sorted(m for m in graph.modules if m.startswith("turboseq"))
    edges = {
        m: {n for n in graph.find_modules_directly_imported_by(m) if n.startswith("turboseq") and n != m}
        for m in modules
    }
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module) :] + [module]))
        if module in done:
            return
        for other in sorted(edges.get(module, ())):
            visit(other, path + [module])
        done.add(module)

    for module in modules:
        visit(module, [])
    assert len(modules) > 30  # the graph really covers the package


def test_modules_stay_small():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 500, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_package_init_is_only_the_public_face():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Import", "Assign"}, kinds  # docstring, imports, __all__
    import turboseq

    for name in turboseq.__all__:
        assert hasattr(turboseq, name), name


@pytest.mark.parametrize("module", ["turboseq", "turboseq.runtime.layers", "turboseq.generation.search"])
def test_importing_the_engine_loads_no_transformers_audio_or_http(module):
    """transformers, tokenizers, PyAV and FastAPI load only when a tokenizer, audio or a server is used (the
    runtime and generation layers may never import them: a contract in pyproject.toml)."""
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "print([m for m in ('transformers', 'tokenizers', 'av', 'fastapi', 'uvicorn') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
