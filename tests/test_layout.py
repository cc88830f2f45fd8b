"""The layout of ../shared/DESIGN.md, held: imports run one way, each concern stays in its home.

    mini_ldm  <-  readers (only mini_ldm.errors / mini_ldm.io)
    mini_ldm, readers  <-  ti          mini_ldm, readers  <-  measure (never ti)
    stats (imports nothing of ours)  <-  classifier (also mini_ldm's plumbing, readers; never ti or measure)
    mini_ldm.errors/io, readers, stats  <-  reader_study (never ti, classifier, membership or measure)
    mini_ldm, ti, readers, stats  <-  membership (never measure, classifier or reader_study)
    everything  <-  the CLIs (prepare.py, evaluate.py and classify.py never import ti)
    tests/ is imported by nothing; devkit/ (random test models) only by tests/ and benchmarks/
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ("classifier", "reader_study", "membership")  # the experiments: none imports another
PACKAGES = ("mini_ldm", "ti", "readers", "measure", "stats", *STUDIES, "devkit", "tests", "benchmarks")
CLIS = ("prepare.py", "train.py", "sample.py", "evaluate.py", "classify.py", "study.py", "privacy.py")
TEST_ONLY = {"devkit", "tests", "benchmarks"}
MAY_NOT_IMPORT = {
    "mini_ldm": {"ti", "readers", "measure", "stats", *STUDIES, *TEST_ONLY},
    "stats": {"mini_ldm", "ti", "readers", "measure", *STUDIES, *TEST_ONLY},
    "readers": {"ti", "measure", "stats", *STUDIES, *TEST_ONLY},
    "ti": {"measure", "stats", *STUDIES, *TEST_ONLY},
    "measure": {"ti", *STUDIES, *TEST_ONLY},
    "classifier": {"ti", "measure", "reader_study", "membership", *TEST_ONLY},
    "reader_study": {"ti", "measure", "classifier", "membership", *TEST_ONLY},
    "membership": {"measure", "classifier", "reader_study", *TEST_ONLY},
    "devkit": {"tests", "benchmarks"},
    "benchmarks": {"tests"},
    "prepare.py": {"ti", "measure", *STUDIES, "devkit", "tests"},
    "evaluate.py": {"ti", *STUDIES, "devkit", "tests"},
    "classify.py": {"ti", "measure", "reader_study", "membership", "devkit", "tests"},
    "train.py": {"measure", *STUDIES, "devkit", "tests"},
    "sample.py": {"ti", "measure", "readers", *STUDIES, "devkit", "tests"},
    "study.py": {"ti", "measure", "classifier", "membership", "devkit", "tests"},
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
    homes = ["mini_ldm", "ti", "readers", "measure", "stats", *STUDIES, *CLIS]
    long = [f"{f.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for home in homes if (ROOT / home).exists() for f in python_files(home)
            for n in ast.walk(ast.parse(f.read_text(encoding="utf-8")))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno >= 60]
    assert not long, "split these where a reader would want names:\n" + "\n".join(long)


def test_reader_study_uses_only_errors_io_and_cli_of_mini_ldm():
    """The study knows nothing of Stable Diffusion: of mini_ldm it uses the error type, the file writing and
    (in study.py) the CLI helpers."""
    used = {m for home in ("reader_study", "study.py") for f in python_files(home) for _, m in absolute_imports(f)
            if m.startswith("mini_ldm")}
    assert used <= {"mini_ldm.errors", "mini_ldm.io", "mini_ldm.cli", "mini_ldm.settings"}, sorted(used)


def test_no_product_file_over_400_lines():
    files = [f for home in ("mini_ldm", "ti", "readers", "measure", "stats", *STUDIES, *CLIS) if (ROOT / home).exists()
             for f in python_files(home)] + sorted((ROOT / "reader_study" / "static").glob("*"))
    long = [f"{f.relative_to(ROOT)} ({n} lines)" for f in files if (n := len(f.read_text(encoding="utf-8").splitlines())) > 400]
    assert not long, long


# classifier/ uses mini_ldm's plumbing (one-line errors, atomic files, flags, devices, the demo folder, fonts),
# never its Stable Diffusion models; mini_ldm.loading is listed for its device and dtype helpers.
CLASSIFIER_MAY_USE = {"mini_ldm.cli", "mini_ldm.errors", "mini_ldm.io", "mini_ldm.hashes", "mini_ldm.settings",
                      "mini_ldm.loading", "mini_ldm.model_settings", "mini_ldm.lazy", "mini_ldm.demo", "mini_ldm.images"}


def test_classifier_uses_only_the_plumbing_of_mini_ldm():
    used = set()
    for f in python_files("classifier"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "mini_ldm":  # from mini_ldm import cli
                used |= {(f.name, f"mini_ldm.{a.name}") for a in node.names}
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                used |= {(f.name, m) for m in modules if m.startswith("mini_ldm.")}
    assert used and {m for _, m in used} <= CLASSIFIER_MAY_USE, sorted(used)
