import re
import subprocess
import sys
from pathlib import Path

import count01


def test_every_public_name_resolves():
    for name in count01.__all__:
        assert getattr(count01, name) is not None, name


def test_importing_count01_loads_neither_torch_nor_pandas_nor_matplotlib_nor_sklearn():
    code = ("import sys, count01; heavy = {'torch', 'pandas', 'matplotlib', 'sklearn', 'ray'}; "
            "print(sorted(heavy & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]"


def test_every_name_the_readme_imports_from_count01_exists():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    names = {n.strip() for line in re.findall(r"^from count01 import (.+)$", readme, re.M)
             for n in line.split("#")[0].split(",")}
    assert len(names) > 10
    assert names <= set(count01.__all__), names - set(count01.__all__)


def test_train_is_the_function_after_its_module_is_imported():
    import count01.train  # the import system sets count01.train to the submodule: refused

    assert callable(count01.train) and count01.train.__module__ == "count01.train"
