from ctdblab.scenarios.stats import percentile, summarize


def test_percentile_interpolates():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 90) == 5.0
    assert percentile([0.0, 10.0], 90) == 9.0


def test_summary_ignores_and_counts_nulls():
    s = summarize([3.0, None, 1.0, 2.0])
    assert s == {"p50": 2.0, "p90": 2.8, "max": 3.0, "n": 3, "missing": 1}


def test_summary_of_nothing_is_null():
    assert summarize([None, None]) == {"p50": None, "p90": None, "max": None, "n": 0, "missing": 2}
