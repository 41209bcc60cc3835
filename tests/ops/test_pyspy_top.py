"""bench/pyspy_top.py reads py-spy's raw profiles, including a frame name that holds a newline."""

from __future__ import annotations

import pytest

from tests.benches import load_bench

pyspy_top = load_bench("pyspy_top")


def test_self_and_inclusive_samples_by_function_without_line_numbers() -> None:
    text = ("main (app.py:1);work (app.py:10);parse (json/decoder.py:5) 7\n"
            "main (app.py:1);work (app.py:12) 3\n"
            "main (app.py:2);<module> (x\ny.py:1) 2\n")
    total, own, inclusive = pyspy_top.tops(pyspy_top.parse(text))
    assert total == 12
    assert own == {"parse (json/decoder.py)": 7, "work (app.py)": 3, "<module> (xy.py)": 2}  # the newline is dropped
    assert inclusive["main (app.py)"] == 12 and inclusive["work (app.py)"] == 10


def test_text_without_a_count_is_refused_naming_its_line() -> None:
    with pytest.raises(ValueError, match="line 2 is not"):
        pyspy_top.parse("main (a.py:1) 1\nmain (a.py:1);broken\n")
