"""Property tests of the page pool: random admit/append/share/free sequences never double-free, never
leak, and free + used = total; block tables only grow at their end."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vxl.engine.kv_cache import BlockManager, BlockTable, OutOfPages

OPS = st.lists(st.tuples(st.sampled_from(["new", "append", "share", "release"]), st.integers(0, 50),
                         st.integers(0, 40)), max_size=80)


@settings(max_examples=200, deadline=None)
@given(num_pages=st.integers(1, 24), page_size=st.integers(1, 7), ops=OPS)
def test_random_operations_keep_the_pool_consistent(num_pages, page_size, ops):
    bm = BlockManager(num_pages, page_size)
    live: list[BlockTable] = []
    for op, pick, amount in ops:
        if op == "new":
            live.append(BlockTable(bm))
        elif op == "append" and live:
            table = live[pick % len(live)]
            before = list(table.pages)
            try:
                table.reserve(table.num_tokens + amount)
                table.num_tokens += amount
            except OutOfPages:
                assert bm.pages_for(table.num_tokens + amount) - len(before) > bm.num_free_pages
            assert table.pages[:len(before)] == before            # append-only
        elif op == "share" and live:
            src = live[pick % len(live)]
            full = src.pages[:src.num_tokens // page_size]
            bm.share(full)
            live.append(BlockTable(bm, full, len(full) * page_size))
        elif op == "release" and live:
            live.pop(pick % len(live)).release()
        bm.check()
        owners = {}
        for t in live:
            for p in t.pages:
                owners[p] = owners.get(p, 0) + 1
        assert all(bm.refcounts[p] == n for p, n in owners.items())
        assert bm.num_free_pages + len(owners) == num_pages
    for t in live:
        t.release()
    bm.check()
    assert bm.num_free_pages == num_pages


def test_double_release_and_sharing_a_free_page_raise():
    bm = BlockManager(4, 2)
    pages = bm.allocate(2)
    bm.release(pages)
    with pytest.raises(ValueError, match="twice"):
        bm.release(pages[:1])
    with pytest.raises(ValueError, match="free"):
        bm.share(pages[:1])
    table = BlockTable(bm)
    table.reserve(3)
    table.release()
    table.release()          # a table releases its pages once, however often it is asked
    assert bm.num_free_pages == 4
