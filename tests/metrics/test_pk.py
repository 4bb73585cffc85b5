"""PK prediction probability against a hand-computed case and against Somers' d (scipy)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from wsipipe.metrics.pk import prediction_probability


def test_pk_by_hand():
    # reference  1    2    2    3
    # prediction 0.1  0.3  0.2  0.2
    # pairs: (0,1) 1<2, .1<.3 concordant;  (0,2) 1<2, .1<.2 concordant;  (0,3) 1<3, .1<.2 concordant;
    #        (1,2) reference tie: left out;  (1,3) 2<3 but .3>.2 discordant;  (2,3) 2<3, .2=.2 tied
    # C = 3, D = 1, Tx = 1:  PK = (3 + 1/2) / (3 + 1 + 1) = 0.7
    assert prediction_probability([1, 2, 2, 3], [0.1, 0.3, 0.2, 0.2]) == pytest.approx(0.7)


def test_pk_extremes():
    ref = [0.0, 0.2, 0.5, 0.9]
    assert prediction_probability(ref, [1, 2, 3, 4]) == 1.0
    assert prediction_probability(ref, [4, 3, 2, 1]) == 0.0
    assert prediction_probability(ref, [7, 7, 7, 7]) == 0.5


def test_pk_is_somers_d_rescaled():
    # PK = (d(prediction | reference) + 1) / 2 where Somers' d counts pairs not tied in the reference
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 6, 200) / 5  # many reference ties, like BreastPathQ's scores
    pred = np.round(ref + rng.normal(0, 0.3, 200), 1)  # and prediction ties
    d = stats.somersd(ref, pred).statistic
    assert prediction_probability(ref, pred) == pytest.approx((d + 1) / 2)


def test_pk_bad_input():
    with pytest.raises(ValueError, match="undefined"):
        prediction_probability([1, 1], [0, 1])
    with pytest.raises(ValueError, match="values"):
        prediction_probability([1, 2], [0, 1, 2])
