"""The question registry and the import graph (issue 12): no cycle among count01's module-level
imports; the questions, the document and the figures import no computation (neither torch nor
the modules that train, run or analyse models), and the report imports none, not even inside a
function: it reads saved tables, and `study.build_report` hands it the hand-built controls."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from count01 import questions
from count01.questions import QUESTIONS, base

SRC = Path(questions.__file__).parents[1]  # src/count01
# modules that train, run or analyse models (the sweep file and tables, sweeps.grid and
# sweeps.tables, are read by the report; the package's __init__ loads the rest on first use)
COMPUTATION = {"model", "train", "language", "export", "study", "restarts", "cli",
               *(f"measure.{m}" for m in ("activations", "metrics", "analysis", "aggregation",
                                          "interventions", "paths", "controls")),
               "sweeps.driver", "sweeps.executors", "sweeps.jobs"}
TORCH = {"torch", "safetensors"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(current: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The count01 modules a relative `from .x import y` names ('' is count01 itself)."""
    package = current.split(".") if is_package else current.split(".")[:-1]
    if current == "":
        package = []
    base_parts = package[:len(package) - (node.level - 1)] if node.level > 1 else package
    target = ".".join([*base_parts, *(node.module.split(".") if node.module else [])])
    out = []
    for alias in node.names:  # `from . import q1` and `from .questions import base` name modules
        sub = f"{target}.{alias.name}" if target else alias.name
        if (SRC / Path(*sub.split("."))).with_suffix(".py").exists() or (
                SRC / Path(*sub.split(".")) / "__init__.py").exists():
            out.append(sub)
        else:
            out.append(target)
    return out


def imports(path: Path, module_level: bool = True) -> set[str]:
    """count01 modules (dotted, under count01) and third-party top-level names that `path`
    imports: at module level (outside `if TYPE_CHECKING:`), or else inside functions only."""
    tree = ast.parse(path.read_text())
    name, is_package = module_name(path), path.name == "__init__.py"
    top: list[ast.AST] = []
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
            continue
        top += list(ast.walk(stmt)) if not isinstance(stmt, ast.FunctionDef | ast.ClassDef) \
            else []
    nodes = top if module_level else [n for n in ast.walk(tree) if n not in set(top)]
    out = set()
    for n in nodes:
        if isinstance(n, ast.ImportFrom):
            out |= (set(resolve(name, is_package, n)) if n.level else
                    {n.module.split(".")[0]})
        elif isinstance(n, ast.Import):
            out |= {a.name.split(".")[0] for a in n.names}
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in SRC.rglob("*.py")}


def closure(start: str, g: dict[str, set[str]]) -> set[str]:
    """Every module importing `start` runs: what it imports, and the packages holding those."""
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for x in g.get(m, set()):
            for up in {".".join(x.split(".")[:i]) for i in range(1, x.count(".") + 2)} - seen:
                seen.add(up)
                todo.append(up)
    return seen


def computation(modules: set[str]) -> set[str]:
    return {m for m in modules if m in COMPUTATION or m.split(".")[0] in COMPUTATION}


def test_module_level_imports_have_no_cycle():
    g = graph()
    inside = {m: {x for x in deps if x in g and x != ""} for m, deps in g.items() if m}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for x in inside[m]:
            assert state.get(x) != 1, "import cycle: " + " -> ".join([*path, m, x])
            if x not in state:
                visit(x, [*path, m])
        state[m] = 2

    for m in inside:
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize("module", ["questions", *(f"questions.{q.__name__.split('.')[-1]}"
                                                   for q in QUESTIONS),
                                    "questions.base", "present", "present.document",
                                    "present.plots", "present.figures", "present.report", "files"])
def test_questions_document_and_figures_import_no_computation(module):
    g = graph()
    reached = closure(module, g) | set(g[module])
    first = {x.split(".")[0] for x in reached}
    assert not first & TORCH, f"{module} reaches {first & TORCH}"
    assert not computation(reached), f"{module} reaches {computation(reached)}"
    path = SRC / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    lazy = imports(path, False)
    assert not computation(lazy) and not {x.split(".")[0] for x in lazy} & TORCH, \
        f"{module} imports {lazy} inside functions"


def test_every_question_module_has_what_the_report_and_judge_read():
    needed = ("NUMBER", "TITLE", "RULE", "HISTORY", "VERSION", "THRESHOLDS", "VARIED",
              "MIN_UNITS", "PARTS", "CONTROLS", "READS", "RULES", "of_evidence", "summary", "numbers",
              "figures", "closing", "controls_text")
    for q in QUESTIONS:
        assert all(hasattr(q, x) for x in needed), q.__name__
        assert q.VERSION == q.HISTORY[-1][0]
    assert [q.NUMBER for q in QUESTIONS] == [1, 2, 3, 4, 5, 6]
    # every rule key is judged by exactly one module, and every threshold has one home
    keys = [k for q in QUESTIONS for k in q.RULES]
    assert len(keys) == len(set(keys)) == len(questions.RULES)
    names = [k for q in QUESTIONS for k in q.THRESHOLDS] + list(base.THRESHOLDS)
    assert len(names) == len(set(names)) == len(questions.THRESHOLDS)
    assert all(set(q.CONTROLS) == set(q.READS) <= set(q.RULES) for q in QUESTIONS)


def test_one_module_chooses_the_matplotlib_backend():
    chosen = [p.name for p in SRC.rglob("*.py") if "matplotlib.use(" in p.read_text()]
    assert chosen == ["figures.py"]


def test_importing_the_report_and_the_figures_loads_no_torch():
    code = ("import sys, count01.present.report, count01.present.plots; "
            "print(sorted({'torch', 'safetensors'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
