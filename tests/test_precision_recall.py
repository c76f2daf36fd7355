"""metrics/precision_recall.py: precision, recall, density and coverage equal to the
reference prdc package, their limits, the real/fake roles, chunking, and the
copy indicator on planted copies."""
import numpy as np
import pytest
import torch

from metrics.precision_recall import copy_share, knn_radii, manifold_metrics, nearest_neighbours


def features(n, d=32, seed=0, shift=0.0):
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


@pytest.mark.parametrize("k", [3, 5])
def test_equal_to_the_prdc_package(k):
    prdc = pytest.importorskip("prdc", reason="the reference implementation (pip install prdc)")
    real, fake = features(300, seed=1), features(250, seed=2, shift=0.3)
    ours = manifold_metrics(real, fake, k_pr=k, k_dc=k)
    ref = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    for name in ("precision", "recall", "density", "coverage"):
        assert ours[name] == pytest.approx(float(ref[name]), abs=1e-6), name
    assert (ours["real_n"], ours["fake_n"], ours["k_pr"]) == (300, 250, k)


def test_identical_sets_give_one_and_far_clusters_give_zero():
    real = features(200, seed=3)
    same = manifold_metrics(real, real.copy())
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    far = manifold_metrics(real, features(200, seed=4, shift=1000.0))
    assert far["precision"] == far["recall"] == far["density"] == far["coverage"] == 0.0


def test_swapping_real_and_fake_swaps_precision_and_recall():
    narrow, wide = features(300, seed=5) * 0.3, features(300, seed=6) * 2.0  # a collapsed set inside a wide one
    a, b = manifold_metrics(wide, narrow, k_pr=3, k_dc=3), manifold_metrics(narrow, wide, k_pr=3, k_dc=3)
    assert a["precision"] > 0.9 and a["recall"] < 0.5  # collapse: good faces, little variety
    assert (a["precision"], a["recall"]) == (b["recall"], b["precision"])


def test_chunked_distances_equal_one_block():
    x = features(123, seed=7)
    whole = knn_radii(x, 3)
    chunked = knn_radii(x, 3, max_elements=7 * 123)  # 7 rows a block, a ragged last one
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)
    both = knn_radii(x, (3, 5), max_elements=7 * 123)  # several k from one pass
    assert torch.equal(both[3], chunked) and torch.all(both[5] >= both[3])
    real, fake = features(90, seed=8), features(70, seed=9)
    assert manifold_metrics(real, fake, max_elements=50) == manifold_metrics(real, fake)
    with pytest.raises(ValueError, match="more than k samples"):
        knn_radii(x[:3], 3)


def test_copy_share_flags_exact_copies_of_training_images():
    train, generated = features(200, seed=10), features(50, seed=11)
    planted = [3, 77, 150, 199]
    mixed = np.concatenate([generated, train[planted]])
    share, flags = copy_share(mixed, train)
    fresh_share, fresh_flags = copy_share(generated, train)  # fresh samples of the same law: a baseline
    assert flags[50:].all() and torch.equal(flags[:50], fresh_flags)
    assert share == pytest.approx((fresh_share * 50 + 4) / 54)
    distance, index = nearest_neighbours(mixed[50:], train, k=2)
    assert index[:, 0].tolist() == planted and torch.all(distance[:, 0] < 1e-6)  # 0 up to the ab-trick rounding
