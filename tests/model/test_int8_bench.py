"""The int8 benchmark's top-10 agreement: what counts as the same list and as a changed item."""

from __future__ import annotations

import numpy as np
import pytest

from fmdev.bench.int8 import top_k_agreement


@pytest.mark.parametrize(("a", "b", "same", "changed"), [
    ([[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 5, 6]], 1.0, 0.0),
    ([[1, 2, 3], [4, 5, 6]], [[2, 1, 3], [4, 5, 6]], 0.5, 0.0),  # reordered: a different list, no item changed
    ([[1, 2, 3], [4, 5, 6]], [[1, 2, 9], [4, 5, 6]], 0.5, 1 / 6),
    ([[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [6, 5, 4]], 0.0, 0.5),
], ids=["identical", "swapped-order", "one-item-replaced", "all-replaced-and-reversed"])
def test_top_k_agreement(a: list[list[int]], b: list[list[int]], same: float, changed: float) -> None:
    got_same, got_changed = top_k_agreement(np.array(a), np.array(b))
    assert got_same == pytest.approx(same)
    assert got_changed == pytest.approx(changed)
