"""dataloader.py: array checks, fingerprint and the DeviceFeeder (CPU)."""
import json

import numpy as np
import pytest
import torch

from dataloader import DeviceFeeder, data_fingerprint, load_images
from utils import UserError

S = 8


def id_images(n: int = 50) -> np.ndarray:
    """Image k has row 0 == k (so it can be identified, flipped or not), a
    dark left half and a bright right half below (so a flip is visible)."""
    images = np.zeros((n, S, S, 3), np.uint8)
    images[:, 1:, S // 2 :] = 255
    images[:, 0] = np.arange(n, dtype=np.uint8)[:, None, None]
    return images


def ids(batch: torch.Tensor) -> list:
    """Image ids of a float [-1, 1] NCHW batch."""
    return torch.round((batch[:, 0, 0, 0] + 1) * 127.5).long().tolist()


def epoch_ids(feeder, epoch, **kw):
    return [ids(b) for b in feeder.epoch(epoch, **kw)]


def test_load_images_checks_with_clear_messages(tmp_path):
    good = tmp_path / "faces_8.npy"
    np.save(good, id_images(4))
    array = load_images(good, size=8)
    assert isinstance(array, np.memmap) and array.shape == (4, 8, 8, 3)
    with pytest.raises(UserError, match="not found.*missing.npy"):
        load_images(tmp_path / "missing.npy")
    with pytest.raises(UserError, match=r"8x8 images \(shape \(4, 8, 8, 3\)\) but size 64 was asked"):
        load_images(good, size=64)
    cases = {"gray.npy": np.zeros((4, 8, 8), np.uint8), "float.npy": np.zeros((4, 8, 8, 3), np.float32),
             "rgba.npy": np.zeros((4, 8, 8, 4), np.uint8), "empty.npy": np.zeros((0, 8, 8, 3), np.uint8)}
    for name, bad in cases.items():
        np.save(tmp_path / name, bad)
        with pytest.raises(UserError, match=name):
            load_images(tmp_path / name)
    (tmp_path / "junk.npy").write_text("not numpy")
    with pytest.raises(UserError, match="junk.npy"):
        load_images(tmp_path / "junk.npy")


def test_fingerprint_from_sidecar_or_content(tmp_path):
    path = tmp_path / "x_8.npy"
    np.save(path, id_images(4))
    first = data_fingerprint(path)
    assert first == data_fingerprint(path) and first.startswith("file-")
    changed = id_images(4)
    changed[2, 5, 5] = 7
    np.save(path, changed)
    assert data_fingerprint(path) != first
    path.with_suffix(".json").write_text(json.dumps({"fingerprint": "abc123", "count": 4, "size": 8}))
    assert data_fingerprint(path) == "abc123"
    path.with_suffix(".json").write_text(json.dumps({"fingerprint": "abc123", "count": 5, "size": 8}))
    assert data_fingerprint(path) != "abc123"  # a stale sidecar describing another array is ignored


def test_feeder_covers_every_image_once_per_epoch():
    feeder = DeviceFeeder(id_images(50), batch_size=8, seed=3)
    assert len(feeder) == 6 and feeder.num_images == 50 and feeder.size == S
    batches = list(feeder.epoch(0))
    assert len(batches) == 6
    assert all(b.shape == (8, 3, S, S) and b.dtype == torch.float32 for b in batches)
    assert batches[0].min() == -1 and batches[0].max() == 1
    seen = sum(epoch_ids(feeder, 0), [])
    assert len(seen) == 48 and len(set(seen)) == 48
    keep_all = DeviceFeeder(id_images(50), batch_size=8, seed=3, drop_last=False)
    seen = sum(epoch_ids(keep_all, 0), [])
    assert len(keep_all) == 7 and sorted(seen) == list(range(50))


def test_feeder_order_is_a_function_of_seed_and_epoch():
    images = id_images(50)
    a, b, c = (DeviceFeeder(images, batch_size=10, seed=s) for s in (1, 1, 2))
    assert epoch_ids(a, 0) == epoch_ids(b, 0)
    assert epoch_ids(a, 0) != epoch_ids(a, 1)
    assert epoch_ids(a, 0) != epoch_ids(c, 0)
    assert epoch_ids(a, 4, start_batch=2) == epoch_ids(b, 4)[2:]  # exact resume mid-epoch
    assert epoch_ids(a, 4, start_batch=len(a)) == []


def test_feeder_shards_are_disjoint_and_cover_the_global_batch():
    images = id_images(50)
    whole = epoch_ids(DeviceFeeder(images, batch_size=8, seed=5), 2)
    shards = [epoch_ids(DeviceFeeder(images, batch_size=8, seed=5, rank=r, world_size=2), 2) for r in (0, 1)]
    for b, global_batch in enumerate(whole):
        assert len(shards[0][b]) == len(shards[1][b]) == 4
        assert shards[0][b] + shards[1][b] == global_batch
    shards = [epoch_ids(DeviceFeeder(images, batch_size=8, seed=5, rank=r, world_size=4, drop_last=False), 0)
              for r in range(4)]
    everything = sum((sum(s, []) for s in shards), [])
    assert sorted(everything) == list(range(50))  # the short last batch is split too


def test_feeder_flip_is_seeded_per_image():
    images = id_images(64)
    feeder = DeviceFeeder(images, batch_size=16, seed=0, flip=True)
    plain = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    flipped_count = 0
    for batch in feeder.epoch(0):
        for image, k in zip(batch, ids(batch)):
            if torch.equal(image, plain[k]):
                continue
            assert torch.equal(image, plain[k].flip(2))  # mirrored left-right, nothing else
            flipped_count += 1
    assert 10 < flipped_count < 54
    again = DeviceFeeder(images, batch_size=16, seed=0, flip=True)
    assert all(torch.equal(x, y) for x, y in zip(feeder.epoch(0), again.epoch(0)))


def test_feeder_channels_last_and_path_input(tmp_path):
    np.save(tmp_path / "d.npy", id_images(20))
    feeder = DeviceFeeder(tmp_path / "d.npy", batch_size=4, channels_last=True)
    reference = DeviceFeeder(id_images(20), batch_size=4)
    for x, y in zip(feeder.epoch(1), reference.epoch(1)):
        assert x.is_contiguous(memory_format=torch.channels_last) and y.is_contiguous()
        assert torch.equal(x, y)


def test_feeder_rejects_bad_arguments():
    images = id_images(10)
    with pytest.raises(UserError, match="shape"):
        DeviceFeeder(np.zeros((10, 8, 8), np.uint8))
    with pytest.raises(UserError, match="dtype float32"):
        DeviceFeeder(images.astype(np.float32))
    with pytest.raises(UserError, match="only 10 images"):
        DeviceFeeder(images, batch_size=16)
    with pytest.raises(UserError, match="multiple of world_size"):
        DeviceFeeder(images, batch_size=6, world_size=4)
    with pytest.raises(UserError, match="rank 2"):
        DeviceFeeder(images, batch_size=4, rank=2, world_size=2)
    with pytest.raises(UserError, match="start_batch"):
        DeviceFeeder(images, batch_size=4).epoch(0, start_batch=3)
    with pytest.raises(UserError, match="not found"):
        DeviceFeeder("no/such/file.npy")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("storage", ["device", "pinned"])
@pytest.mark.parametrize("which", ["cuda", "last"])
def test_feeder_cuda_storage_matches_cpu(storage, which):
    """'last': the highest-numbered GPU while GPU 0 stays current (the pinned
    copies and their events must live on the feeder's GPU)."""
    images = id_images(40)
    device = "cuda" if which == "cuda" else f"cuda:{torch.cuda.device_count() - 1}"
    gpu = DeviceFeeder(images, batch_size=8, device=device, seed=1, flip=True, storage=storage)
    assert gpu.storage == storage
    batches = list(gpu.epoch(0))
    assert all(b.is_cuda and b.shape == (8, 3, S, S) for b in batches)
    seen = sum((ids(b.cpu()) for b in batches), [])
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 40
