"""Deterministic loading: collate, seeds, workers, shards and resumable infinite batches."""

import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from kinema.data.loader import (
    batches_per_epoch,
    collate,
    infinite_batches,
    make_loader,
    shard_indices,
)
from kinema.data.synthetic import BouncingShapes, MovingDigits


class EpochAware(Dataset):
    """Item content depends on (index, epoch), like VideoFolder's random clips."""

    def __init__(self, n=10):
        self.n, self.epoch = n, 0

    def __len__(self):
        return self.n

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __getitem__(self, i):
        rng = np.random.default_rng([i, self.epoch])
        return {"video": torch.from_numpy(rng.standard_normal((1, 2, 2, 2)).astype(np.float32)),
                "caption": f"{i}", "index": i, "epoch": self.epoch}


def same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k
    return True


def test_collate_stacks_tensors_and_numbers_and_keeps_strings():
    items = [{"video": torch.full((3, 2, 4, 4), float(i)), "caption": f"c{i}", "color_id": i, "flag": i % 2 == 0,
              "scale": 0.5 * i, "digits": [i, i + 1], "frame_segments": torch.tensor([0, 0, 1]),
              "path": None} for i in range(3)]
    batch = collate(items)
    assert batch["video"].shape == (3, 3, 2, 4, 4) and torch.equal(batch["video"][2], items[2]["video"])
    assert batch["caption"] == ["c0", "c1", "c2"]
    assert batch["color_id"].dtype == torch.long and batch["color_id"].tolist() == [0, 1, 2]
    assert batch["flag"].dtype == torch.bool and batch["flag"].tolist() == [True, False, True]
    assert batch["scale"].dtype == torch.float32
    assert batch["digits"].tolist() == [[0, 1], [1, 2], [2, 3]]
    assert batch["frame_segments"].shape == (3, 3)
    assert batch["path"] == [None, None, None]
    with pytest.raises(ValueError, match="'video'.*shapes"):
        collate([{"video": torch.zeros(1, 2)}, {"video": torch.zeros(1, 3)}])


def test_collate_of_dataset_items():
    batch = collate([MovingDigits(num_frames=2, size=16, length=4)[i] for i in range(4)])
    assert batch["video"].shape == (4, 1, 2, 16, 16) and batch["digits"].shape == (4, 2)


def test_shards_are_disjoint_and_cover_the_dataset():
    for n, world in [(12, 3), (10, 4), (2, 3)]:
        shards = [shard_indices(n, seed=5, epoch=1, rank=r, world_size=world) for r in range(world)]
        assert len({len(s) for s in shards}) == 1  # equal counts: DDP ranks stay in step
        flat = np.concatenate(shards)
        assert set(flat.tolist()) == set(range(n))
        if n % world == 0:
            assert len(flat) == n  # disjoint
        else:
            assert len(flat) - len(set(flat.tolist())) == len(flat) - n  # only the wrap-around padding repeats
    a = shard_indices(20, seed=0, epoch=0)
    assert sorted(a.tolist()) == list(range(20))
    assert not np.array_equal(a, shard_indices(20, seed=0, epoch=1))  # reshuffled each epoch
    assert not np.array_equal(a, shard_indices(20, seed=1, epoch=0))
    assert shard_indices(5, shuffle=False).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="rank=3"):
        shard_indices(5, rank=3, world_size=2)


def test_loader_is_deterministic_and_independent_of_workers():
    ds = BouncingShapes(num_frames=2, size=8, length=16, seed=0)
    runs = [list(make_loader(ds, 4, seed=3, num_workers=w)) for w in (0, 0, 2)]
    assert len(runs[0]) == 4
    for other in runs[1:]:
        assert all(same(a, b) for a, b in zip(runs[0], other))
    shuffled = list(make_loader(ds, 4, seed=4))
    assert any(not torch.equal(a["video"], b["video"]) for a, b in zip(runs[0], shuffled))
    # the batch content matches direct indexing of the dataset in the sampler's order
    order = shard_indices(16, seed=3)
    assert torch.equal(runs[0][1]["video"], torch.stack([ds[int(i)]["video"] for i in order[4:8]]))


def test_loader_ranks_see_disjoint_shards_and_epochs_propagate():
    ds = EpochAware(12)
    seen = []
    for rank in range(3):
        for batch in make_loader(ds, 2, seed=0, rank=rank, world_size=3, epoch=2, num_workers=0):
            seen += batch["index"].tolist()
            assert batch["epoch"].tolist() == [2, 2]
    assert sorted(seen) == list(range(12))
    loader = make_loader(ds, 5, drop_last=False, epoch=1)
    assert [len(b["index"]) for b in loader] == [5, 5, 2]
    assert ds.epoch == 1


def test_infinite_batches_resume_reproduces_the_uninterrupted_stream():
    ds = EpochAware(10)  # 3 batches of 3 per epoch (drop_last), 1 item left out each epoch
    assert batches_per_epoch(10, 3) == 3
    full = list(itertools.islice(infinite_batches(ds, 3, seed=7), 11))
    assert [b["epoch"][0].item() for b in full] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    for start in (1, 3, 5, 9):
        resumed = list(itertools.islice(infinite_batches(EpochAware(10), 3, seed=7, start_step=start), 11 - start))
        assert all(same(a, b) for a, b in zip(full[start:], resumed))
    # epochs differ in order and in (epoch-dependent) content
    assert full[0]["index"].tolist() != full[3]["index"].tolist()


def test_infinite_batches_with_workers_matches_in_process_loading():
    a = list(itertools.islice(infinite_batches(EpochAware(6), 2, seed=1, num_workers=2, start_step=2), 4))
    b = list(itertools.islice(infinite_batches(EpochAware(6), 2, seed=1, num_workers=0, start_step=2), 4))
    assert all(same(x, y) for x, y in zip(a, b))
    assert [x["epoch"][0].item() for x in a] == [0, 1, 1, 1]  # workers saw set_epoch


def test_infinite_batches_rejects_a_batch_larger_than_the_shard():
    with pytest.raises(ValueError, match="batch_size=8"):
        next(infinite_batches(EpochAware(10), 8, world_size=2))
    with pytest.raises(ValueError, match="start_step"):
        next(infinite_batches(EpochAware(10), 2, start_step=-1))
