"""Task scores from per-document values: GSM8K's strict answer extraction, the plain mean and its
sample standard error, and MMLU's mean of subject means with the standard error of that mean."""
from __future__ import annotations

import math

import pytest

from evalsuite import tasks


# ---------------------------------------------------------------------------- GSM8K strict match
@pytest.mark.parametrize("text,expected", [
    ("Natalia sold 48 clips in April.\n#### 72", "72"),
    ("So the total is 1,234 dollars.\n#### 1,234\n\nQuestion: next", "1234"),  # commas removed
    ("#### -5", "-5"),  # negatives kept
    ("#### 0.50", "0.50"),  # decimals kept as written, no normalization
    ("#### 7.", "7."),  # v1's pattern takes a trailing period too; the gold "7" then does not match
    ("first #### 3 then #### 4", "3"),  # the first match wins
    ("The answer is 72.", "[invalid]"),  # no "#### N": invalid, never a guessed number
    ("####72", "[invalid]"),  # the space after #### is part of the strict pattern
    ("#### seventy-two", "[invalid]"),
    ("", "[invalid]"),
])
def test_gsm8k_strict_extraction(text, expected):
    assert tasks.gsm8k_extract(text) == expected
    assert tasks.GSM8K_INVALID == "[invalid]"


# ---------------------------------------------------------------------------- aggregation and stderr
def test_plain_mean_and_sample_stderr_by_hand():
    # values 1, 0, 1, 1: mean 0.75; sample sd = sqrt(((.25^2)*3 + .75^2) / 3) = sqrt(0.25) = 0.5; se = 0.5 / 2
    assert tasks.mean_stderr([1, 0, 1, 1]) == pytest.approx((0.75, 0.25))
    mean, se = tasks.mean_stderr([1.0])
    assert mean == 1.0 and math.isnan(se)  # one value has no sample standard error
    assert all(math.isnan(x) for x in tasks.mean_stderr([]))
    assert tasks.aggregate(tasks.load_spec("arc"), [1, 0, 1, 1], [None] * 4) == pytest.approx((0.75, 0.25))


def test_mmlu_is_the_mean_of_subject_means_with_the_stderr_of_that_mean():
    spec = tasks.load_spec("mmlu")
    assert spec.aggregate == "mean_of_groups"
    # subject A: 1, 1, 1, 0 (mean .75, se .25); subject B: 0, 1 (mean .5, se .5); subject C: 0 (mean 0, no se)
    values = [1, 1, 1, 0, 0, 1, 0]
    groups = ["a", "a", "a", "a", "b", "b", "c"]
    mean, se = tasks.aggregate(spec, values, groups)
    assert mean == pytest.approx((0.75 + 0.5 + 0.0) / 3)  # 0.41667, not the pooled 4/7 = 0.5714
    assert mean != pytest.approx(sum(values) / len(values))
    # var(mean of 3 independent subject means) = (se_a^2 + se_b^2) / 3^2; C contributes no error term
    assert se == pytest.approx(math.sqrt(0.25 ** 2 + 0.5 ** 2) / 3)  # 0.18634
    assert se == pytest.approx(0.186339, abs=1e-6)
    # the order of the documents does not matter, only their subjects
    order = [6, 0, 4, 1, 5, 2, 3]
    assert tasks.aggregate(spec, [values[i] for i in order], [groups[i] for i in order]) == pytest.approx((mean, se))
    assert all(math.isnan(x) for x in tasks.aggregate(spec, [], []))


