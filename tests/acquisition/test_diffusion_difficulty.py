"""Spec §4 (Eqs. 5-6) math on hand-computed cases: oracle and zero predictors, seeding, ROI, crops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gsal_edge.acquisition.diffusion_difficulty import (
    box_to_latent_cells,
    crop_regions,
    ddim_timesteps,
    difficulty,
    reconstruct,
    roi_scores,
    seed_from,
    timestep_index,
    trajectory_noise,
    trajectory_noises,
)

ABAR = np.linspace(0.999, 0.05, 100)


def test_seed_and_noise_are_reproducible_and_distinct() -> None:
    a = trajectory_noise("slice-1", 0, (4, 8, 8), 7)
    assert a.dtype == np.float32 and a.shape == (4, 8, 8)
    np.testing.assert_array_equal(a, trajectory_noise("slice-1", 0, (4, 8, 8), 7))
    assert seed_from("slice-1", 0, 7) != seed_from("slice-1", 1, 7)
    assert seed_from("slice-1", 0, 7) != seed_from("slice-2", 0, 7)
    assert seed_from("slice-1", 0, 7) != seed_from("slice-1", 0, 8)
    assert not np.allclose(a, trajectory_noise("slice-1", 1, (4, 8, 8), 7))


def test_common_random_numbers_score_the_same_pixels_the_same_under_any_id(rng: np.random.Generator) -> None:
    """noise='common': the score is a function of the pixels alone; per_image: of pixels and id."""
    z = rng.normal(size=(1, 3, 6, 6)).astype(np.float32)
    z0 = np.repeat(z, 5, axis=0)
    ids = [f"slice-{i}" for i in range(5)]
    damp = lambda zt, tt: 0.5 * zt  # any deterministic predictor
    E_common = difficulty(z0, reconstruct(z0, ids, damp, ABAR, K=4, t_index=30, base_seed=3, noise="common"))[0]
    E_per = difficulty(z0, reconstruct(z0, ids, damp, ABAR, K=4, t_index=30, base_seed=3))[0]
    assert np.ptp(E_common) == 0.0
    assert np.ptp(E_per) > 0.0  # the per-image lottery the common mode removes
    # a batch of one gives the same common score (draws do not depend on the batch)
    E_one = difficulty(z0[:1], reconstruct(z0[:1], ["other"], damp, ABAR, K=4, t_index=30, base_seed=3,
                                           noise="common"))[0]
    assert E_one[0] == E_common[0]


def test_antithetic_pairs_and_bad_mode() -> None:
    eps = trajectory_noises("s", 5, (2, 3, 3), 1, antithetic=True)
    assert eps.shape == (5, 2, 3, 3)
    np.testing.assert_array_equal(eps[1], -eps[0])
    np.testing.assert_array_equal(eps[3], -eps[2])
    np.testing.assert_array_equal(eps[0], trajectory_noise("s", 0, (2, 3, 3), 1))
    np.testing.assert_array_equal(eps[2], trajectory_noise("s", 1, (2, 3, 3), 1))
    plain = trajectory_noises("s", 3, (2, 3, 3), 1)
    np.testing.assert_array_equal(plain[2], trajectory_noise("s", 2, (2, 3, 3), 1))
    with pytest.raises(ValueError, match="noise must be one of"):
        trajectory_noises("s", 2, (2, 3, 3), 1, noise="shared")


def test_oracle_predictor_reconstructs_exactly(rng: np.random.Generator) -> None:
    Z = rng.normal(size=(4, 6, 6)).astype(np.float32)
    t = 40
    a = ABAR[t]

    def oracle(z_t: np.ndarray, tt: np.ndarray) -> np.ndarray:
        ab = ABAR[tt][:, None, None, None]
        return (z_t - np.sqrt(ab) * Z[None]) / np.sqrt(1 - ab)

    z0 = np.stack([Z, Z, Z])
    for steps in (0, 4):
        zhat = reconstruct(z0, ["a", "b", "c"], oracle, ABAR, K=3, t_index=t, base_seed=1, ddim_steps=steps)
        assert zhat.shape == (3, 3, 4, 6, 6)
        E, V, e_map, v_map = difficulty(z0, zhat)
        assert np.all(E < 1e-9) and np.all(V < 1e-9)
        assert e_map.shape == (3, 6, 6) and v_map.shape == (3, 6, 6)
    assert a > 0


def test_zero_predictor_closed_form(rng: np.random.Generator) -> None:
    # eps_theta = 0  =>  zhat_k = z0 + sqrt((1-a)/a) eps_k, so E_rec = (1-a)/a * mean_k mean(eps_k^2)
    z0 = rng.normal(size=(2, 3, 5, 5)).astype(np.float32)
    ids, K, t, seed = ["x", "y"], 4, 30, 11
    zero = lambda z, tt: np.zeros_like(z)
    zhat = reconstruct(z0, ids, zero, ABAR, K=K, t_index=t, base_seed=seed)
    E, V, e_map, v_map = difficulty(z0, zhat)
    a = ABAR[t]
    for b, iid in enumerate(ids):
        eps = np.stack([trajectory_noise(iid, k, (3, 5, 5), seed) for k in range(K)]).astype(np.float64)
        assert E[b] == pytest.approx((1 - a) / a * np.mean(eps**2), rel=1e-5)
        assert V[b] == pytest.approx((1 - a) / a * np.mean((eps - eps.mean(0)) ** 2), rel=1e-5)
        np.testing.assert_allclose(e_map[b], (1 - a) / a * (eps**2).mean(axis=(0, 1)), rtol=1e-5)
    # the spatial mean of the maps is the image-level score
    np.testing.assert_allclose(e_map.mean(axis=(1, 2)), E)
    np.testing.assert_allclose(v_map.mean(axis=(1, 2)), V)
    # deterministic DDIM with eps = 0 also lands on z_t / sqrt(abar_t)
    zhat_ddim = reconstruct(z0, ids, zero, ABAR, K=K, t_index=t, base_seed=seed, ddim_steps=5)
    np.testing.assert_allclose(zhat_ddim, zhat, rtol=1e-5, atol=1e-5)


def test_tiny_hand_example() -> None:
    # one latent element, abar_t = 0.5, constant predictor eps = 1 =>  zhat = (z_t - sqrt(.5)) / sqrt(.5)
    z0 = np.array([[[[2.0]]]], dtype=np.float32)
    abar = np.array([0.5])
    zhat = reconstruct(z0, ["i"], lambda z, t: np.ones_like(z), abar, K=2, t_index=0, base_seed=0)
    n = [float(trajectory_noise("i", k, (1, 1, 1), 0)[0, 0, 0]) for k in range(2)]
    expect = [2.0 + e - 1.0 for e in n]
    np.testing.assert_allclose(zhat[0, :, 0, 0, 0], expect, rtol=1e-6)
    E, V, _, _ = difficulty(z0, zhat)
    assert E[0] == pytest.approx(np.mean([(2.0 - x) ** 2 for x in expect]), rel=1e-6)
    assert V[0] == pytest.approx(np.var(expect), rel=1e-6)


def test_batch_composition_and_call_batching(rng: np.random.Generator) -> None:
    z0 = rng.normal(size=(3, 2, 4, 4)).astype(np.float32)
    calls: list[int] = []

    def pred(z: np.ndarray, t: np.ndarray) -> np.ndarray:
        assert z.dtype == np.float32 and t.dtype == np.int64 and t.shape == (z.shape[0],)
        calls.append(z.shape[0])
        return np.tanh(z) * 0.3 + 0.01 * t[:, None, None, None]

    full = reconstruct(z0, ["a", "b", "c"], pred, ABAR, K=4, t_index=25, base_seed=3, max_batch=5)
    assert calls == [5, 5, 2]
    calls.clear()
    alone = reconstruct(z0[2:], ["c"], pred, ABAR, K=4, t_index=25, base_seed=3, max_batch=64)
    assert calls == [4]
    np.testing.assert_allclose(alone[0], full[2], rtol=1e-6)
    swapped = reconstruct(z0[[1, 0]], ["b", "a"], pred, ABAR, K=4, t_index=25, base_seed=3, max_batch=3)
    np.testing.assert_allclose(swapped[0], full[1], rtol=1e-6)
    calls.clear()
    reconstruct(z0, ["a", "b", "c"], pred, ABAR, K=4, t_index=25, base_seed=3, ddim_steps=3, max_batch=12)
    assert calls == [12, 12, 12]


def test_reconstruct_rejects_bad_inputs(rng: np.random.Generator) -> None:
    z0 = rng.normal(size=(2, 1, 2, 2)).astype(np.float32)
    ok = lambda z, t: z
    with pytest.raises(ValueError, match="image_ids"):
        reconstruct(z0, ["a"], ok, ABAR, K=1, t_index=1, base_seed=0)
    with pytest.raises(ValueError, match="t_index"):
        reconstruct(z0, ["a", "b"], ok, ABAR, K=1, t_index=100, base_seed=0)
    with pytest.raises(ValueError, match="predict_eps returned"):
        reconstruct(z0, ["a", "b"], lambda z, t: z[:, :, :1], ABAR, K=1, t_index=1, base_seed=0)


def test_timesteps() -> None:
    assert timestep_index(0.25, 1000) == 250
    assert timestep_index(1.0, 1000) == 999
    assert list(ddim_timesteps(250, 0)) == [250]
    assert list(ddim_timesteps(250, 1)) == [250]
    ts = ddim_timesteps(250, 5)
    assert list(ts) == [250, 200, 150, 100, 50]
    assert list(ddim_timesteps(2, 10)) == [2, 1, 0]


def test_box_to_latent_cells() -> None:
    # 16x16 image, 4x4 latent: 4 px per cell
    assert box_to_latent_cells((4, 4, 8, 8), (16, 16), (4, 4), margin=1.0) == (1, 2, 1, 2)
    assert box_to_latent_cells((2, 2, 10, 10), (16, 16), (4, 4), margin=1.0) == (0, 3, 0, 3)
    # 1.5x margin about the centre (6, 6): (3, 3, 9, 9) -> cells 0..3
    assert box_to_latent_cells((4, 4, 8, 8), (16, 16), (4, 4), margin=1.5) == (0, 3, 0, 3)
    # a 1-pixel box still covers one cell; a box at the border is clipped
    assert box_to_latent_cells((5, 5, 5.5, 5.5), (16, 16), (4, 4), margin=1.0) == (1, 2, 1, 2)
    assert box_to_latent_cells((15.9, 15.9, 16, 16), (16, 16), (4, 4), margin=1.0) == (3, 4, 3, 4)
    assert box_to_latent_cells((12, 0, 20, 4), (16, 16), (4, 4), margin=1.0) == (0, 1, 3, 4)
    # non-square image: 8 px rows, 2 px cols per cell
    assert box_to_latent_cells((0, 0, 3, 9), (32, 8), (4, 4), margin=1.0) == (0, 2, 0, 2)


def test_roi_scores_mean_and_max() -> None:
    e = np.arange(16, dtype=float).reshape(4, 4)
    v = -e
    boxes = [(2, 2, 10, 10), (4, 4, 8, 8)]
    E, V = roi_scores(e, v, boxes, (16, 16), margin=1.0, reduce="mean")
    np.testing.assert_allclose(E, [np.mean([0, 1, 2, 4, 5, 6, 8, 9, 10]), 5.0])
    np.testing.assert_allclose(V, [-5.0, -5.0])
    E, V = roi_scores(e, v, boxes, (16, 16), margin=1.0, reduce="max")
    np.testing.assert_allclose(E, [10.0, 5.0])
    np.testing.assert_allclose(V, [0.0, -5.0])
    E, V = roi_scores(e, v, np.zeros((0, 4)), (16, 16))
    assert E.shape == (0,) and V.shape == (0,)
    with pytest.raises(ValueError, match="reduce"):
        roi_scores(e, v, boxes, (16, 16), reduce="median")  # type: ignore[arg-type]


def test_crop_regions() -> None:
    img = np.arange(32 * 32, dtype=np.float32).reshape(32, 32)
    # margin 1, size = box side: the exact pixels
    c = crop_regions(img, [(4, 6, 12, 14)], margin=1.0, size=8)
    np.testing.assert_array_equal(c[0], img[6:14, 4:12])
    # 1.5x margin about the centre (8, 10): 12x12 region, rows 4..16, cols 2..14, resized 12 -> 12
    c = crop_regions(img, [(4, 6, 12, 14)], margin=1.5, size=12)
    np.testing.assert_array_equal(c[0], img[4:16, 2:14])
    # square: a thin box takes its long side; near the border the region is shifted inside
    c = crop_regions(img, [(0, 0, 8, 2)], margin=1.0, size=8)
    np.testing.assert_array_equal(c[0], img[0:8, 0:8])
    # resizing keeps the mean of a linear ramp
    c = crop_regions(img, [(0, 0, 32, 32)], margin=1.0, size=16)
    assert c.shape == (1, 16, 16) and c.dtype == np.float32
    assert math.isclose(float(c.mean()), float(img.mean()), rel_tol=1e-3)
    # min_side floor
    c = crop_regions(img, [(15, 15, 16, 16)], margin=1.0, size=4, min_side=4)
    np.testing.assert_array_equal(c[0], img[14:18, 14:18])
    with pytest.raises(ValueError, match="HxW"):
        crop_regions(np.zeros((3, 8, 8)), [(0, 0, 1, 1)])


# ---------------------------------------------------------------------- issue 16: crop shape and border
def test_masked_crop_keeps_context_and_weights_only_the_enlarged_box() -> None:
    from gsal_edge.acquisition.diffusion_difficulty import crop_regions_weighted

    img = np.arange(32 * 32, dtype=np.float32).reshape(32, 32)
    box = [(4, 14, 20, 16)]  # a thin horizontal crack: 16 x 2 px
    sq, w_sq = crop_regions_weighted(img, box, margin=1.0, size=16, shape="square")
    mk, w_mk = crop_regions_weighted(img, box, margin=1.0, size=16, shape="masked")
    np.testing.assert_array_equal(mk, sq)  # the same pixels (rows 7..23 of the context) ...
    np.testing.assert_array_equal(sq[0], img[7:23, 4:20])
    assert (w_sq == 1).all()
    # ... but only the 2 box rows (14, 15 = crop rows 7, 8) count
    np.testing.assert_array_equal(w_mk[0].sum(axis=1) > 0, np.isin(np.arange(16), [7, 8]))
    np.testing.assert_allclose(w_mk[0, 7:9], 1.0)


def test_stretch_crop_keeps_the_box_aspect() -> None:
    from gsal_edge.acquisition.diffusion_difficulty import crop_regions_weighted

    img = np.tile(np.arange(32, dtype=np.float32), (32, 1)) + 100 * np.arange(32, dtype=np.float32)[:, None]
    c, w = crop_regions_weighted(img, [(8, 10, 24, 12)], margin=1.0, size=8, shape="stretch")
    # cols 8..24 (x ramp 8..23) over rows 10..12 only: no row outside the box
    assert (w == 1).all()
    assert 1000 - 1 <= c.min() and c.max() <= 1123 + 1
    assert c[0, :, 0].mean() < c[0, :, -1].mean()


def test_border_shift_moves_inside_reflect_centres_and_masks_the_outside() -> None:
    from gsal_edge.acquisition.diffusion_difficulty import crop_regions_weighted

    img = np.arange(16 * 16, dtype=np.float32).reshape(16, 16)
    box = [(12, 4, 16, 8)]  # touches the right border; margin 2 -> 8 px region centred at x = 14
    sh, w_sh = crop_regions_weighted(img, box, margin=2.0, size=8, border="shift")
    np.testing.assert_array_equal(sh[0], img[2:10, 8:16])  # shifted 2 px left
    assert (w_sh == 1).all()
    rf, w_rf = crop_regions_weighted(img, box, margin=2.0, size=8, border="reflect")
    np.testing.assert_array_equal(rf[0, :, :6], img[2:10, 10:16])  # centred: cols 10..18
    np.testing.assert_array_equal(rf[0, :, 6:], img[2:10, [15, 14]])  # the outside mirrored
    np.testing.assert_array_equal(w_rf[0], np.repeat([[1.0] * 6 + [0.0] * 2], 8, axis=0))
    with pytest.raises(ValueError, match="shape"):
        crop_regions_weighted(img, box, shape="round")
    with pytest.raises(ValueError, match="border"):
        crop_regions_weighted(img, box, border="zero")


def test_weighted_scores_average_only_the_weighted_cells() -> None:
    from gsal_edge.acquisition.diffusion_difficulty import latent_weights, weighted_scores

    e = np.arange(2 * 4 * 4, dtype=np.float64).reshape(2, 4, 4)
    v = 2 * e
    px = np.zeros((2, 8, 8))
    px[0, :2, :4] = 1.0  # latent cells (0, 0), (0, 1)
    lw = latent_weights(px, (4, 4))
    np.testing.assert_allclose(lw[0, 0, :2], 1.0)
    assert lw[0].sum() == 2 and lw[1].sum() == 0
    E, V = weighted_scores(e, v, lw)
    assert E[0] == (e[0, 0, 0] + e[0, 0, 1]) / 2 and V[0] == 2 * E[0]
    assert E[1] == e[1].mean()  # no weight at all: the plain mean
    np.testing.assert_array_equal(weighted_scores(e, v, None)[0], e.mean(axis=(1, 2)))
    with pytest.raises(ValueError, match="multiple"):
        latent_weights(np.zeros((1, 6, 6)), (4, 4))
