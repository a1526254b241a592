"""`make test` runs pytest-xdist with ``--dist loadgroup``: the tests of one ``xdist_group`` go to one worker,
so a module's fixtures (a trained checkpoint, a prepared file) are built once, and the compiled-MAE test reuses
the kernels that the compiled-MAMP test built. pytest 9.2 silently broke that (pytest-xdist#1386: the
``@group`` suffix xdist appends to each node id no longer takes effect, so groups were dealt out test by test);
pyproject pins pytest below 9.2 for it. This test fails, instead of the suite quietly costing more, if the
grouping stops working again."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.xdist_group("xdist_groups")


def test_a_grouped_test_carries_its_group_under_loadgroup(request):
    if not os.environ.get("PYTEST_XDIST_WORKER") or not getattr(request.config.option, "loadgroup", False):
        pytest.skip("only meaningful under pytest-xdist with --dist loadgroup (make test)")
    assert request.node.nodeid.endswith("@xdist_groups"), request.node.nodeid
