"""How the command line shows runs: pure functions of records."""

from __future__ import annotations

from gleitzeit.display import short, table, took


def test_took_reads_as_a_person_would_say_it() -> None:
    assert took(None, None) == "-"
    assert took(10.0, 10.0421) == "42ms"
    assert took(10.0, 22.25) == "12.2s"
    assert took(0.0, 125.0) == "2m05s"
    assert took(0.0, 2 * 3600 + 180.0) == "2h03m"
    assert took(0.0, None, now=3.0) == "3.0s+"  # still going


def test_short_keeps_one_line_and_says_it_cut() -> None:
    assert short("a\n  b") == "a b"
    assert short("x" * 100, 10) == "xxxxxxx..."


def test_table_aligns_columns_and_leaves_the_last_unpadded() -> None:
    assert table(["A", "BB", "C"], [["long", "x", "tail"], ["s", "yy", ""]]) == [
        "A     BB  C",
        "long  x   tail",
        "s     yy",
    ]
