import subprocess
import sys

import count01


def test_every_public_name_resolves():
    for name in count01.__all__:
        assert getattr(count01, name) is not None, name


def test_importing_count01_loads_neither_pandas_nor_matplotlib_nor_sklearn():
    code = ("import sys, count01; heavy = {'pandas', 'matplotlib', 'sklearn', 'ray'}; "
            "print(sorted(heavy & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]"
