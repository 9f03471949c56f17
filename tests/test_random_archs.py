"""Property test: removal on seeded random architectures is exact or refused, never a silent change.

The grammar and the contract live in tests/random_archs.py; the long run is marked slow
(``pytest -m slow``) or run as a script (``python tests/random_archs.py 500``).
"""
import pytest

from random_archs import check

FAST = range(40)
SLOW = range(40, 500)


def test_random_architectures_keep_the_contract():
    outcomes = [check(seed)[0] for seed in FAST]
    assert outcomes.count("exact") + outcomes.count("partial") >= len(FAST) // 2, outcomes


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW)
def test_random_architecture_long_run(seed):
    check(seed)
