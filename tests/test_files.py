import json
import math

import pytest

from count01.files import atomic_write, read_json, write_json


def test_atomic_write_leaves_nothing_behind_when_writing_fails(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def fail(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_gives_the_mode_a_plain_open_would(tmp_path):
    atomic_write(tmp_path / "a.json", lambda tmp: open(tmp, "w").write("{}"))
    (tmp_path / "b.json").write_text("{}")
    assert (tmp_path / "a.json").stat().st_mode == (tmp_path / "b.json").stat().st_mode


def test_write_json_writes_non_finite_numbers_as_null_and_strict_json(tmp_path):
    write_json(tmp_path / "m.json", {"a": [math.nan, 1.5], "b": {"c": math.inf}, "d": (2, -math.inf)})

    def refuse(name):
        raise ValueError(name)

    text = (tmp_path / "m.json").read_text()
    assert json.loads(text, parse_constant=refuse) == {"a": [None, 1.5], "b": {"c": None},
                                                        "d": [2, None]}
    assert read_json(tmp_path / "m.json")["a"] == [None, 1.5]
