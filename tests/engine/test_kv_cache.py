"""KVCache: slot mapping, writing and reading a table's entries, and the copy-on-write fork, against
an independent dense indexing of the page tensors; page sizes 1 and 16, pages handed out permuted."""
from __future__ import annotations

import pytest
import torch

from vxl.engine.kv_cache import KVCache

NUM_LAYERS, NUM_KV_HEADS, HEAD_DIM = 2, 3, 5


def make_cache(num_pages: int, page_size: int, seed: int = 0) -> KVCache:
    cache = KVCache(NUM_LAYERS, num_pages, page_size, NUM_KV_HEADS, HEAD_DIM, torch.float32, torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_pages, generator=gen).tolist()       # tables get pages out of order
    cache.pool.free_pages.clear()
    cache.pool.free_pages.extend(order)
    for k, v in cache.layers:                                      # stale data, never zeros
        k.copy_(torch.randn(k.shape, generator=gen))
        v.copy_(torch.randn(v.shape, generator=gen))
    return cache


def random_kv(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    shape = (n, NUM_KV_HEADS, HEAD_DIM)
    return [(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)) for _ in range(NUM_LAYERS)]


def dense_entries(cache: KVCache, pages: list[int], n: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    k, v = cache.layers[layer]
    rows_k = [k[pages[i // cache.page_size], i % cache.page_size] for i in range(n)]
    rows_v = [v[pages[i // cache.page_size], i % cache.page_size] for i in range(n)]
    return torch.stack(rows_k), torch.stack(rows_v)


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("n", [1, 17, 37])
def test_write_read_and_slot_mapping(page_size, n):
    cache = make_cache(num_pages=-(-40 // page_size) + 2, page_size=page_size, seed=n)
    table = cache.new_table()
    kv = random_kv(n, seed=n)
    cache.write(table, kv)
    assert table.num_tokens == n and len(table.pages) == -(-n // page_size)
    for layer, ((k, v), (rk, rv)) in enumerate(zip(kv, cache.read(table))):
        dk, dv = dense_entries(cache, table.pages, n, layer)
        assert torch.equal(dk, k) and torch.equal(dv, v) and torch.equal(rk, k) and torch.equal(rv, v)
    idx = torch.tensor([0, n - 1, -1])
    expected = [table.pages[0] * page_size, table.pages[(n - 1) // page_size] * page_size + (n - 1) % page_size, -1]
    assert cache.slot_mapping(table, idx).tolist() == expected
    table.release()
    cache.pool.check()
    assert cache.pool.num_free_pages == cache.pool.num_pages


@pytest.mark.parametrize("page_size,n", [(1, 9), (16, 32), (16, 37)])
def test_fork_shares_full_pages_and_copies_the_partial_one(page_size, n):
    cache = make_cache(num_pages=8 if page_size == 16 else 24, page_size=page_size, seed=3)
    table = cache.new_table()
    kv = random_kv(n, seed=4)
    cache.write(table, kv)
    fork = cache.fork(table)
    num_full = n // page_size
    assert fork.num_tokens == n and fork.pages[:num_full] == table.pages[:num_full]
    assert all(cache.pool.refcounts[p] == 2 for p in table.pages[:num_full])
    if n % page_size:
        assert fork.pages[num_full] != table.pages[num_full] and cache.pool.refcounts[fork.pages[num_full]] == 1
    for (k, v), (fk, fv) in zip(kv, cache.read(fork)):
        assert torch.equal(fk, k) and torch.equal(fv, v)
    fork.reserve(n + 1)                                          # the fork appends into its own page
    slot = cache.slot_mapping(fork, torch.tensor([n]))
    for k_cache, _ in cache.layers:
        k_cache.view(-1, NUM_KV_HEADS, HEAD_DIM)[slot] = 7.0
    for (k, _), (rk, _) in zip(kv, cache.read(table)):
        assert torch.equal(rk, k)                                # the original's entries are untouched
    fork.release()
    table.release()
    cache.pool.check()
    assert cache.pool.num_free_pages == cache.pool.num_pages
