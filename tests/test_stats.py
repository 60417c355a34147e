import numpy as np

from count01.stats import wilson


def test_wilson_interval_matches_published_values():
    lo, hi = wilson([0, 5, 10, 81], [10, 10, 10, 263])
    np.testing.assert_allclose(lo, [0.0, 0.2366, 0.7225, 0.2553], atol=1e-4)
    np.testing.assert_allclose(hi, [0.2775, 0.7634, 1.0, 0.3662], atol=1e-4)


def test_wilson_interval_holds_the_rate_and_narrows_with_more_runs():
    k, n = np.array([1, 10, 100]), np.array([4, 40, 400])
    lo, hi = wilson(k, n)
    assert np.all(lo < k / n) and np.all(k / n < hi)
    assert np.all(np.diff(hi - lo) < 0)
    assert np.isnan(wilson(0, 0)[0])
