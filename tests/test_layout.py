"""The layout of ../shared/DESIGN.md, held: imports run one way, each concern stays in its home.

    mini_ldm  <-  readers (only mini_ldm.errors / mini_ldm.io)
    mini_ldm, readers  <-  ti          mini_ldm, readers  <-  measure (never ti)
    mini_ldm, readers, ti, stats  <-  membership (never measure)
    everything  <-  the CLIs (prepare.py, evaluate.py and classify.py never import ti)
    tests/ is imported by nothing; devkit/ (random test models) only by tests/ and benchmarks/
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mini_ldm", "ti", "readers", "measure", "stats", "membership", "devkit", "tests", "benchmarks")
CLIS = ("prepare.py", "train.py", "sample.py", "evaluate.py", "classify.py", "privacy.py")
MAY_NOT_IMPORT = {
    "mini_ldm": {"ti", "readers", "measure", "stats", "membership", "devkit", "tests", "benchmarks"},
    "stats": {"mini_ldm", "ti", "readers", "measure", "membership", "devkit", "tests", "benchmarks"},
    "readers": {"ti", "measure", "stats", "membership", "devkit", "tests", "benchmarks"},
    "ti": {"measure", "devkit", "tests", "benchmarks"},
    "measure": {"ti", "membership", "devkit", "tests", "benchmarks"},
    "membership": {"measure", "classifier", "reader_study", "devkit", "tests", "benchmarks"},
    "devkit": {"tests", "benchmarks"},
    "benchmarks": {"tests"},
    "prepare.py": {"ti", "measure", "devkit", "tests"},
    "evaluate.py": {"ti", "devkit", "tests"},
    "classify.py": {"ti", "devkit", "tests"},
    "train.py": {"measure", "devkit", "tests"},
    "sample.py": {"ti", "measure", "readers", "devkit", "tests"},
    "privacy.py": {"measure", "classifier", "reader_study", "devkit", "tests"},
}
READERS_MAY_USE = {"mini_ldm.errors", "mini_ldm.io"}


def python_files(home: str) -> list[Path]:
    path = ROOT / home
    return [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))


def absolute_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("home", sorted(MAY_NOT_IMPORT))
def test_imports_run_one_way(home):
    if not (ROOT / home).exists():
        pytest.skip(f"{home} is not in this tree")
    against = [f"{f.relative_to(ROOT)}:{line} imports {module}"
               for f in python_files(home) for line, module in absolute_imports(f)
               if module.split(".")[0] in MAY_NOT_IMPORT[home]]
    assert not against, "\n".join(against)


def test_readers_use_only_errors_and_io_of_mini_ldm():
    used = {(f.name, m) for f in python_files("readers") for _, m in absolute_imports(f) if m.startswith("mini_ldm")}
    assert {m for _, m in used} <= READERS_MAY_USE, sorted(used)


def test_mini_ldm_is_stable_diffusion_only():
    """No FID/Inception code and no medical reader in the Stable Diffusion package."""
    for f in python_files("mini_ldm"):
        text = f.read_text(encoding="utf-8")
        modules = {m.split(".")[0] for _, m in absolute_imports(f)}
        assert not modules & {"pydicom", "SimpleITK", "scipy"}, f
        assert "class Inception" not in text and "def fid(" not in text, f


def test_no_function_over_60_lines_in_product_code():
    homes = ["mini_ldm", "ti", "readers", "measure", "stats", "membership", *CLIS]
    long = [f"{f.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for home in homes if (ROOT / home).exists() for f in python_files(home)
            for n in ast.walk(ast.parse(f.read_text(encoding="utf-8")))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno >= 60]
    assert not long, "split these where a reader would want names:\n" + "\n".join(long)
