"""The lab's one percentile and the results.json summary built on it."""

import pytest

from ctdblab.stats import median, percentile, summarize


def test_percentile_interpolates_between_closest_ranks():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 90) == 5.0
    assert percentile([0.0, 10.0], 90) == 9.0
    assert percentile([2.95, 2.85, 2.80], 50) == 2.85          # order of input does not matter
    assert percentile([2.80, 2.85, 2.95], 90) == pytest.approx(2.85 + 0.8 * 0.10)
    assert median([3.0, 1.0, 2.0, 10.0]) == 2.5


def test_percentile_of_nothing_or_out_of_range_is_an_error():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_ignores_and_counts_nulls():
    s = summarize([3.0, None, 1.0, 2.0])
    assert s == {"p50": 2.0, "p90": 2.8, "max": 3.0, "n": 3, "missing": 1}


def test_summary_of_nothing_is_null():
    assert summarize([None, None]) == {"p50": None, "p90": None, "max": None, "n": 0, "missing": 2}
