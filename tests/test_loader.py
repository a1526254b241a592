"""The clip dataset and loader: ordering, sharding, padding, labels, prefetch thread, HDF5 modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skelcli.data.loader import ClipDataset, ClipLoader
from skelcli.errors import SkelError


def encoded_dataset(n: int = 23, seed: int = 0) -> ClipDataset:
    """Clip i has length 3 + (7 i mod 17) frames, every value of frame t equal to 1000 i + t + 1,
    label i mod 5 and name "S{i:03d}", so a batch can be checked against its indices."""
    lengths = [3 + (7 * i) % 17 for i in range(n)]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    frames = np.zeros((offsets[-1], 2, 25, 3), dtype=np.float32)
    for i, length in enumerate(lengths):
        frames[offsets[i] : offsets[i + 1]] = (1000 * i + np.arange(length) + 1)[:, None, None, None]
    labels = np.arange(n) % 5
    return ClipDataset(frames, offsets, labels, names=[f"S{i:03d}" for i in range(n)])


def check_batch(ds: ClipDataset, batch, indices: np.ndarray) -> None:
    """Every row of the batch is the clip its index names: frames, zero padding, valid, label."""
    assert batch.joints.dtype == torch.float32 and batch.joints.shape[1:] == (2, batch.joints.shape[2], 25, 3)
    assert batch.joints.shape[2] == int(ds.lengths[indices].max())  # padded to the longest clip
    for k, i in enumerate(indices.tolist()):
        length = int(ds.lengths[i])
        expected = 1000 * i + torch.arange(length, dtype=torch.float32) + 1
        assert torch.equal(batch.joints[k, :, :length], expected[None, :, None, None].expand(2, length, 25, 3))
        assert torch.all(batch.joints[k, :, length:] == 0)
        assert batch.valid[k].item() == length
        assert batch.label[k].item() == i % 5 and ds.names[i] == f"S{i:03d}"


def run_epoch(loader: ClipLoader) -> list[np.ndarray]:
    ds = loader.dataset
    seen = []
    for batch in loader:
        check_batch(ds, batch, loader.last_indices)
        seen.append(loader.last_indices.copy())
    return seen


def test_every_index_once_per_epoch_and_content_aligned():
    ds = encoded_dataset()
    loader = ClipLoader(ds, 4, shuffle=True, drop_last=False, seed=3)
    assert len(loader) == 6  # ceil(23 / 4)
    seen = run_epoch(loader)
    assert [len(s) for s in seen] == [4, 4, 4, 4, 4, 3]
    assert sorted(np.concatenate(seen).tolist()) == list(range(23))
    assert loader.stats.batches == 6 and loader.stats.samples == 23 and loader.stats.wait_s >= 0


def test_shuffle_changes_per_epoch_and_repeats_for_a_seed():
    ds = encoded_dataset()
    a = ClipLoader(ds, 5, shuffle=True, drop_last=False, seed=1)
    b = ClipLoader(ds, 5, shuffle=True, drop_last=False, seed=1)
    orders = []
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        oa, ob = np.concatenate(run_epoch(a)), np.concatenate(run_epoch(b))
        assert np.array_equal(oa, ob)
        orders.append(oa)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    a.set_epoch(0)
    assert np.array_equal(np.concatenate(run_epoch(a)), orders[0])  # set_epoch(0) again: same order
    other_seed = ClipLoader(ds, 5, shuffle=True, drop_last=False, seed=2)
    assert not np.array_equal(np.concatenate(run_epoch(other_seed)), orders[0])
    # the DistributedSampler rule: randperm from a generator seeded with seed + epoch
    a.set_epoch(2)
    assert np.array_equal(a.epoch_indices(), torch.randperm(23, generator=torch.Generator().manual_seed(3)).numpy())


def test_no_shuffle_is_in_order():
    ds = encoded_dataset()
    loader = ClipLoader(ds, 8, shuffle=False, drop_last=False)
    assert np.array_equal(np.concatenate(run_epoch(loader)), np.arange(23))


def test_drop_last():
    ds = encoded_dataset()
    loader = ClipLoader(ds, 4, shuffle=True, drop_last=True, seed=0)
    assert len(loader) == 5
    seen = run_epoch(loader)
    assert len(seen) == 5 and all(len(s) == 4 for s in seen)
    assert len(set(np.concatenate(seen).tolist())) == 20
    with pytest.raises(SkelError, match="no full batch"):
        ClipLoader(ds, 24, drop_last=True)
    assert len(ClipLoader(ds, 24, drop_last=False)) == 1


def test_distributed_sharding_covers_everything():
    ds = encoded_dataset(23)
    shards = []
    for rank in range(2):
        loader = ClipLoader(ds, 3, shuffle=True, drop_last=False, seed=4, rank=rank, world_size=2)
        loader.set_epoch(1)
        assert len(loader) == 4  # ceil(23 / 2) = 12 per rank -> 4 batches of 3
        shards.append(np.concatenate(run_epoch(loader)))
    assert len(shards[0]) == len(shards[1]) == 12  # padded to 24 = a multiple of world_size
    union = np.concatenate(shards)
    assert sorted(set(union.tolist())) == list(range(23))
    perm = torch.randperm(23, generator=torch.Generator().manual_seed(5)).numpy()
    padded = np.concatenate([perm, perm[:1]])  # one index repeated from the head
    assert np.array_equal(shards[0], padded[0::2]) and np.array_equal(shards[1], padded[1::2])
    with pytest.raises(SkelError):
        ClipLoader(ds, 3, rank=2, world_size=2)


def test_prefetch_thread_matches_synchronous_and_stops_early():
    ds = encoded_dataset()
    sync = ClipLoader(ds, 4, shuffle=True, drop_last=False, seed=9, prefetch=0)
    threaded = ClipLoader(ds, 4, shuffle=True, drop_last=False, seed=9, prefetch=2)
    for bs, bt in zip(sync, threaded):
        assert torch.equal(bs.joints, bt.joints) and torch.equal(bs.label, bt.label)
    # break after one batch: the worker thread must stop, a fresh iteration starts from the top
    it = iter(threaded)
    first = next(it)
    it.close()
    again = next(iter(threaded))
    assert torch.equal(first.joints, again.joints)


def test_errors_in_the_worker_reach_the_consumer():
    ds = encoded_dataset()

    def broken(indices, pin_memory=False):
        raise RuntimeError("disk on fire")

    ds.collate = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="disk on fire"):
        next(iter(ClipLoader(ds, 4, prefetch=2)))


def test_dataset_validation():
    frames = np.zeros((10, 2, 25, 3), dtype=np.float32)
    with pytest.raises(SkelError):
        ClipDataset(frames, [0, 4, 9], [0, 1])  # offsets do not end at the frame count
    with pytest.raises(SkelError):
        ClipDataset(frames, [0, 4, 10], [0])  # too few labels
    with pytest.raises(SkelError):
        ClipDataset(frames[:, 0], [0, 4, 10], [0, 1])  # wrong rank
    ds = ClipDataset(frames, [0, 4, 4, 10], [0, 1, 2])  # an empty clip is allowed
    batch = next(iter(ClipLoader(ds, 3, shuffle=False)))
    assert batch.valid.tolist() == [4, 0, 6] and batch.joints.shape == (3, 2, 6, 25, 3)


def test_start_batch_resumes_mid_epoch_once():
    ds = encoded_dataset()
    loader = ClipLoader(ds, 4, shuffle=True, drop_last=True, seed=5)
    loader.set_epoch(3)
    full = run_epoch(loader)
    loader.set_epoch(3, start_batch=2)
    resumed = run_epoch(loader)
    assert len(resumed) == len(full) - 2
    assert all(np.array_equal(a, b) for a, b in zip(resumed, full[2:]))
    assert len(run_epoch(loader)) == len(full)  # the next pass is whole again


# ------------------------------------------------------------------------------ HDF5 store
def write_encoded_store(path, n: int = 23) -> ClipDataset:
    """The encoded dataset written through ``store.write_store``; split xsub: train = odd-ish mix."""
    from skelcli.data import store

    ds = encoded_dataset(n)
    samples = (store.Sample(name=ds.names[i], joints=ds.clip(i).numpy(), label=int(ds.labels[i])) for i in range(n))
    train = np.array([i for i in range(n) if i % 3 != 0])
    test = np.array([i for i in range(n) if i % 3 == 0])
    store.write_store(path, samples, dataset="ntu60", num_classes=60, splits={"xsub": {"train": train, "test": test}},
                      rejected=[], preprocessing={}, source={"test": "test_loader"}, force=True)
    return ds


@pytest.mark.parametrize("budget_gb", [8.0, 1e-9])
def test_from_store_in_memory_and_lazy(tmp_path, budget_gb):
    path = tmp_path / "enc.h5"
    ref = write_encoded_store(path)
    ds = ClipDataset.from_store(path, "xsub", "train", memory_budget_gb=budget_gb)
    assert ds.in_memory == (budget_gb > 1)
    train = [i for i in range(23) if i % 3 != 0]
    assert len(ds) == len(train) and ds.names == [ref.names[i] for i in train]
    assert np.array_equal(ds.labels, ref.labels[train]) and np.array_equal(ds.lengths, ref.lengths[train])
    for k, i in enumerate(train):
        assert torch.equal(ds.clip(k), ref.clip(i))
    loader = ClipLoader(ds, 5, shuffle=True, drop_last=False, seed=0)
    seen = []
    for batch in loader:
        local = loader.last_indices
        for row, k in enumerate(local.tolist()):
            i = train[k]  # the file index behind local index k: clip content encodes it
            length = int(ref.lengths[i])
            assert torch.equal(batch.joints[row, :, :length], ref.clip(i).transpose(0, 1))
            assert torch.all(batch.joints[row, :, length:] == 0)
            assert batch.label[row].item() == ref.labels[i] and ds.names[k] == f"S{i:03d}"
        seen.extend(local.tolist())
    assert sorted(seen) == list(range(len(train)))
    limited = ClipDataset.from_store(path, "xsub", "test", limit=4, memory_budget_gb=budget_gb)
    assert limited.names == [ref.names[i] for i in (0, 3, 6, 9)]


def test_lazy_and_in_memory_batches_identical(tmp_path):
    path = tmp_path / "enc.h5"
    write_encoded_store(path)
    a = ClipLoader(ClipDataset.from_store(path, "xsub", "train"), 4, seed=1)
    b = ClipLoader(ClipDataset.from_store(path, "xsub", "train", memory_budget_gb=1e-9), 4, seed=1)
    for x, y in zip(a, b):
        assert torch.equal(x.joints, y.joints) and torch.equal(x.valid, y.valid) and torch.equal(x.label, y.label)


def test_from_store_bad_input(tmp_path):
    path = tmp_path / "enc.h5"
    write_encoded_store(path)
    with pytest.raises(SkelError, match="protocol"):
        ClipDataset.from_store(path, "xview", "train")
    with pytest.raises(SkelError):
        ClipDataset.from_store(tmp_path / "missing.h5", "xsub", "train")
    foreign = tmp_path / "foreign.h5"
    import h5py

    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(SkelError, match="not a skelcli"):
        ClipDataset.from_store(foreign, "xsub", "train")


def _child_reads(args):
    ds, indices = args
    joints, valid, label = ds.collate(indices)
    return joints.sum().item(), valid.tolist(), label.tolist()


def test_lazy_reads_after_fork_open_their_own_handle(tmp_path):
    import multiprocessing as mp

    from skelcli.data import loader as loader_mod

    path = tmp_path / "enc.h5"
    write_encoded_store(path)
    ds = ClipDataset.from_store(path, "xsub", "train", memory_budget_gb=1e-9)
    expected = _child_reads((ds, [0, 5, 9]))  # the parent opens (and caches) its handle first
    with mp.get_context("fork").Pool(1) as pool:
        got = pool.map(_child_reads, [(ds, [0, 5, 9])])[0]
    assert got == expected
    assert all(pid == __import__("os").getpid() for pid, _ in loader_mod._HANDLES)  # children's handles are theirs
