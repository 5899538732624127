"""Diffusion generative difficulty (spec §4, Eqs. 5-6) as pure numpy math.

Any backend plugs in through one callable ``predict_eps(z_t, t) -> eps`` (numpy in, numpy out), so
PyTorch, ONNX Runtime and TensorRT engines give the same scores. Symbols follow the spec:

    z_t,k  = sqrt(abar_t) * z0 + sqrt(1 - abar_t) * eps_k
    zhat_k = (z_t,k - sqrt(1 - abar_t) * eps_theta(z_t,k, t)) / sqrt(abar_t)    (one-step x0)
    E_rec  = (1/K) sum_k mean((z0 - zhat_k)^2)                                   (Eq. 5)
    V_den  = (1/K) sum_k mean((zhat_k - zbar)^2)                                 (Eq. 6)

D = alpha z(E_rec) + beta z(V_den) (Eqs. 7-8) needs the pool's z-scores and lives in ``fusion``.
The noise eps_k of image ``image_id`` is seeded from sha256(base_seed, image_id, k) (docs/DESIGN.md
"Randomness"), so a score does not depend on the batch it was computed in. **[ours]** ``noise="common"``
(common random numbers) seeds it from (base_seed, k) alone: every latent of one shape (every slice of a
pool, every proposal crop) meets the same K draws, so two slices' scores differ by their content only.
``antithetic=True`` pairs the draws: eps_(2j+1) = -eps_(2j).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

PredictEps = Callable[[np.ndarray, np.ndarray], np.ndarray]
Box = tuple[float, float, float, float]

__all__ = [
    "CROP_BORDERS",
    "CROP_SHAPES",
    "NOISE_MODES",
    "PredictEps",
    "box_to_latent_cells",
    "crop_regions",
    "crop_regions_weighted",
    "ddim_timesteps",
    "difficulty",
    "enlarge_box",
    "latent_weights",
    "reconstruct",
    "roi_scores",
    "seed_from",
    "timestep_index",
    "trajectory_noise",
    "trajectory_noises",
    "weighted_scores",
]

NOISE_MODES = ("per_image", "common")
CROP_SHAPES = ("square", "stretch", "masked")  # see crop_regions_weighted
CROP_BORDERS = ("shift", "reflect")
COMMON_NOISE_ID = "<common>"  # the id every slice shares under noise="common"


def seed_from(image_id: str, k: int, base_seed: int) -> int:
    """64-bit seed for trajectory ``k`` of ``image_id``: sha256 of ``"{base_seed}:{image_id}:{k}"``."""
    digest = hashlib.sha256(f"{int(base_seed)}:{image_id}:{int(k)}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def trajectory_noise(image_id: str, k: int, shape: Sequence[int], base_seed: int) -> np.ndarray:
    """eps_k ~ N(0, I) of shape ``shape`` (float32) for image ``image_id``, trajectory ``k``.

    Drawn from ``numpy.random.default_rng(seed_from(image_id, k, base_seed))``: the same whatever
    batch, order or backend the image is scored with.
    """
    rng = np.random.default_rng(seed_from(image_id, k, base_seed))
    return rng.standard_normal(tuple(int(s) for s in shape), dtype=np.float32)


def trajectory_noises(image_id: str, K: int, shape: Sequence[int], base_seed: int, noise: str = "per_image",
                      antithetic: bool = False) -> np.ndarray:
    """The K draws eps_1..eps_K [K, *shape] of one latent under a noise mode (see module doc)."""
    if noise not in NOISE_MODES:
        raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
    key = COMMON_NOISE_ID if noise == "common" else image_id
    if not antithetic:
        return np.stack([trajectory_noise(key, k, shape, base_seed) for k in range(K)])
    base = [trajectory_noise(key, j, shape, base_seed) for j in range((K + 1) // 2)]
    return np.stack([base[k // 2] if k % 2 == 0 else -base[k // 2] for k in range(K)])


def timestep_index(t_frac: float, num_train_timesteps: int) -> int:
    """Integer timestep t = round(t_frac * T), clipped to [0, T-1] (spec default t = 0.25 T)."""
    if not 0.0 <= t_frac <= 1.0:
        raise ValueError(f"t_frac must be in [0, 1], got {t_frac}")
    return int(min(max(round(t_frac * num_train_timesteps), 0), num_train_timesteps - 1))


def ddim_timesteps(t_index: int, steps: int) -> np.ndarray:
    """Descending DDIM timesteps from ``t_index`` towards 0: ``steps`` evenly spaced, unique, int64.

    ``steps <= 1`` gives ``[t_index]`` (the one-step x0 prediction).
    """
    steps = max(int(steps), 1)
    ts = np.round(np.linspace(t_index, 0, steps, endpoint=False)).astype(np.int64)
    return np.unique(ts)[::-1].copy()


def _check_alphas(alphas_cumprod: np.ndarray, t_index: int) -> np.ndarray:
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    if abar.ndim != 1 or abar.size == 0:
        raise ValueError(f"alphas_cumprod must be a non-empty 1-D array, got shape {abar.shape}")
    if not 0 <= t_index < abar.size:
        raise ValueError(f"t_index {t_index} outside [0, {abar.size - 1}] (len(alphas_cumprod))")
    if np.any(abar <= 0) or np.any(abar > 1):
        raise ValueError("alphas_cumprod must lie in (0, 1]")
    return abar


def reconstruct(
    z0: np.ndarray,
    image_ids: Sequence[str],
    predict_eps: PredictEps,
    alphas_cumprod: np.ndarray,
    K: int,
    t_index: int,
    base_seed: int,
    ddim_steps: int = 0,
    max_batch: int = 64,
    noise: str = "per_image",
    antithetic: bool = False,
) -> np.ndarray:
    """K stochastic reconstructions zhat_k of each latent z0 (spec §4): returns [B, K, c, h, w] float32.

    All B*K trajectories are flattened and sent to ``predict_eps`` in chunks of at most
    ``max_batch`` rows (``predict_eps(z_t [n,c,h,w] f32, t [n] int64) -> eps [n,c,h,w]``).
    ``ddim_steps <= 1``: one-step x0-prediction zhat = (z_t - sqrt(1-abar_t) eps)/sqrt(abar_t);
    ``ddim_steps = S > 1`` [ours]: S deterministic DDIM (eta = 0) steps from t down to 0.
    ``noise`` / ``antithetic`` [ours]: how eps_k is drawn (module doc).
    """
    z0 = np.asarray(z0, dtype=np.float32)
    if z0.ndim != 4:
        raise ValueError(f"z0 must be [B, c, h, w], got shape {z0.shape}")
    B = z0.shape[0]
    if len(image_ids) != B:
        raise ValueError(f"{len(image_ids)} image_ids for a batch of {B} latents")
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    abar = _check_alphas(alphas_cumprod, t_index)
    lat_shape = z0.shape[1:]

    if B and noise == "common":  # one draw shared by the batch
        eps = np.broadcast_to(trajectory_noises("", K, lat_shape, base_seed, noise, antithetic),
                              (B, K, *lat_shape))
    elif B:
        eps = np.stack([trajectory_noises(iid, K, lat_shape, base_seed, noise, antithetic) for iid in image_ids])
    else:
        eps = np.zeros((0, K, *lat_shape), np.float32)
    a_t = abar[t_index]
    z_t = (math.sqrt(a_t) * z0[:, None] + math.sqrt(1.0 - a_t) * eps).astype(np.float32)
    flat = z_t.reshape(B * K, *lat_shape)
    out = np.empty_like(flat)
    steps = ddim_timesteps(t_index, ddim_steps)
    for start in range(0, flat.shape[0], max_batch):
        z = flat[start : start + max_batch].astype(np.float64)
        for i, t in enumerate(steps):
            tt = np.full((z.shape[0],), int(t), dtype=np.int64)
            e = np.asarray(predict_eps(z.astype(np.float32), tt), dtype=np.float64)
            if e.shape != z.shape:
                raise ValueError(f"predict_eps returned shape {e.shape}, expected {z.shape}")
            a = abar[int(t)]
            x0 = (z - math.sqrt(1.0 - a) * e) / math.sqrt(a)
            if i + 1 < len(steps):
                a_next = abar[int(steps[i + 1])]
                z = math.sqrt(a_next) * x0 + math.sqrt(1.0 - a_next) * e
            else:
                z = x0
        out[start : start + max_batch] = z.astype(np.float32)
    return out.reshape(B, K, *lat_shape)


def difficulty(z0: np.ndarray, zhat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Eqs. 5-6 and their per-position maps: returns (E_rec [B], V_den [B], e_map [B,h,w], v_map [B,h,w]).

    e(h,w) = (1/K) sum_k mean_c (z0 - zhat_k)^2, v(h,w) = (1/K) sum_k mean_c (zhat_k - zbar)^2;
    E_rec and V_den are their spatial means (= the means over all latent elements). float64.
    """
    z0 = np.asarray(z0, dtype=np.float64)
    zhat = np.asarray(zhat, dtype=np.float64)
    if zhat.ndim != 5 or z0.ndim != 4 or zhat.shape[:1] + zhat.shape[2:] != z0.shape:
        raise ValueError(f"shapes must be z0 [B,c,h,w] and zhat [B,K,c,h,w]; got {z0.shape} and {zhat.shape}")
    e_map = ((z0[:, None] - zhat) ** 2).mean(axis=(1, 2))
    zbar = zhat.mean(axis=1, keepdims=True)
    v_map = ((zhat - zbar) ** 2).mean(axis=(1, 2))
    return e_map.mean(axis=(1, 2)), v_map.mean(axis=(1, 2)), e_map, v_map


def enlarge_box(box: Box, image_hw: tuple[int, int], margin: float) -> Box:
    """The box scaled by ``margin`` about its centre (context margin, spec default 1.5), clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 >= x1 and y2 >= y1):
        raise ValueError(f"box {box} is not (x1, y1, x2, y2) with x2 >= x1, y2 >= y1")
    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    H, W = image_hw
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    hw, hh = (x2 - x1) * margin / 2, (y2 - y1) * margin / 2
    return (max(cx - hw, 0.0), max(cy - hh, 0.0), min(cx + hw, float(W)), min(cy + hh, float(H)))


def box_to_latent_cells(
    box: Box, image_hw: tuple[int, int], latent_hw: tuple[int, int], margin: float = 1.5
) -> tuple[int, int, int, int]:
    """Latent-grid footprint ``(r0, r1, c0, c1)`` (half-open rows/cols) of the enlarged box; >= 1 cell.

    Pixel edges map to latent cells by x * w / W; the footprint covers every cell the enlarged box
    touches (floor of the start, ceil of the end), and at least the cell holding the box centre.
    """
    H, W = image_hw
    h, w = latent_hw
    x1, y1, x2, y2 = enlarge_box(box, image_hw, margin)
    sy, sx = h / H, w / W
    r0, r1 = math.floor(y1 * sy + 1e-9), math.ceil(y2 * sy - 1e-9)
    c0, c1 = math.floor(x1 * sx + 1e-9), math.ceil(x2 * sx - 1e-9)
    r0, c0 = min(max(r0, 0), h - 1), min(max(c0, 0), w - 1)
    r1, c1 = min(max(r1, r0 + 1), h), min(max(c1, c0 + 1), w)
    return r0, r1, c0, c1


def roi_scores(
    e_map: np.ndarray,
    v_map: np.ndarray,
    boxes: np.ndarray | Sequence[Box],
    image_hw: tuple[int, int],
    margin: float = 1.5,
    reduce: Literal["mean", "max"] = "mean",
) -> tuple[np.ndarray, np.ndarray]:
    """``latent_roi`` mode [ours]: (E_rec(p) [N], V_den(p) [N]) = reduce of one image's e/v maps [h,w]
    over each proposal's latent footprint (see :func:`box_to_latent_cells`)."""
    e_map = np.asarray(e_map, dtype=np.float64)
    v_map = np.asarray(v_map, dtype=np.float64)
    if e_map.ndim != 2 or e_map.shape != v_map.shape:
        raise ValueError(f"e_map and v_map must be one image's [h, w] maps; got {e_map.shape}, {v_map.shape}")
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    fn = np.mean if reduce == "mean" else np.max
    bx = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    E = np.empty(len(bx))
    V = np.empty(len(bx))
    for i, b in enumerate(bx):
        r0, r1, c0, c1 = box_to_latent_cells(tuple(b), image_hw, e_map.shape, margin)
        E[i] = fn(e_map[r0:r1, c0:c1])
        V[i] = fn(v_map[r0:r1, c0:c1])
    return E, V


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize of a float32 HxW array to size x size (PIL mode 'F')."""
    from PIL import Image

    if img.shape == (size, size):
        return img.astype(np.float32, copy=True)
    pil = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def _region(box: np.ndarray, W: int, H: int, margin: float, min_side: float, shape: str, border: str
            ) -> tuple[int, int, int, int]:
    """Integer region (r0, c0, nh, nw) of one enlarged box; with ``border="shift"`` inside the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    bw, bh = max((x2 - x1) * margin, min_side, 1.0), max((y2 - y1) * margin, min_side, 1.0)
    if shape != "stretch":
        bw = bh = max(bw, bh)
    nw, nh = min(math.ceil(bw - 1e-9), W), min(math.ceil(bh - 1e-9), H)
    c0, r0 = math.floor(cx - nw / 2 + 0.5), math.floor(cy - nh / 2 + 0.5)
    if border == "shift":
        c0, r0 = min(max(c0, 0), W - nw), min(max(r0, 0), H - nh)
    return r0, c0, nh, nw


def crop_regions_weighted(
    image: np.ndarray,
    boxes: np.ndarray | Sequence[Box],
    margin: float = 1.5,
    size: int = 64,
    shape: str = "square",
    border: str = "shift",
    min_side: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Proposal regions [N, size, size] and their pixel weights [N, size, size] in [0, 1] (``crop`` mode).

    The region is the box enlarged by ``margin`` about its centre. ``shape`` [ours]:
    ``"square"`` both sides take the longer one (weights 1; the paper-era default); ``"stretch"`` the
    region keeps its aspect and is resized anisotropically (weights 1); ``"masked"`` the square region with
    its context, weighted 1 on the enlarged box only, so a thin crack's E_rec is not mostly background.
    ``border`` [ours]: ``"shift"`` moves a region that crosses the image edge back inside (a border
    proposal is then off-centre); ``"reflect"`` keeps it centred, fills the outside by reflection and
    weights those pixels 0. Weights are resized like the image (bilinear), so they are fractional at edges.
    """
    if shape not in CROP_SHAPES:
        raise ValueError(f"crop shape must be one of {CROP_SHAPES}, got {shape!r}")
    if border not in CROP_BORDERS:
        raise ValueError(f"crop border must be one of {CROP_BORDERS}, got {border!r}")
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"crop_regions expects one HxW image, got shape {img.shape}")
    H, W = img.shape
    bx = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.empty((len(bx), size, size), dtype=np.float32)
    wts = np.ones((len(bx), size, size), dtype=np.float32)
    for i, b in enumerate(bx):
        if not (b[2] >= b[0] and b[3] >= b[1]):
            raise ValueError(f"box {i} {tuple(b)} is not (x1, y1, x2, y2)")
        r0, c0, nh, nw = _region(b, W, H, margin, min_side, shape, border)
        pad = (max(-r0, 0), max(r0 + nh - H, 0)), (max(-c0, 0), max(c0 + nw - W, 0))
        src = np.pad(img, pad, mode="symmetric") if any(p for pp in pad for p in pp) else img
        rr, cc = r0 + pad[0][0], c0 + pad[1][0]
        out[i] = _resize(src[rr : rr + nh, cc : cc + nw], size)
        if shape != "masked" and border == "shift":
            continue
        ys = np.arange(r0, r0 + nh, dtype=np.float64) + 0.5  # pixel centres of the region
        xs = np.arange(c0, c0 + nw, dtype=np.float64) + 0.5
        w = np.ones((nh, nw), dtype=np.float32)
        if border == "reflect":
            w *= ((ys >= 0) & (ys <= H))[:, None] & ((xs >= 0) & (xs <= W))[None, :]
        if shape == "masked":
            ex1, ey1, ex2, ey2 = _enlarged(b, margin, min_side)
            w *= ((ys >= ey1) & (ys <= ey2))[:, None] & ((xs >= ex1) & (xs <= ex2))[None, :]
            if not w.any():  # a sub-pixel box: its centre pixel
                w[nh // 2, nw // 2] = 1.0
        wts[i] = np.clip(_resize(w, size), 0.0, 1.0)
    return out, wts


def _enlarged(box: np.ndarray, margin: float, min_side: float) -> tuple[float, float, float, float]:
    """The box enlarged by ``margin`` (each side floored at ``min_side`` and 1 px), unclipped."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    hw = max((x2 - x1) * margin, min_side, 1.0) / 2
    hh = max((y2 - y1) * margin, min_side, 1.0) / 2
    return cx - hw, cy - hh, cx + hw, cy + hh


def crop_regions(
    image: np.ndarray,
    boxes: np.ndarray | Sequence[Box],
    margin: float = 1.5,
    size: int = 64,
    square: bool = True,
    min_side: float = 0.0,
) -> np.ndarray:
    """``crop`` mode regions without weights: :func:`crop_regions_weighted` with border ``"shift"`` and
    shape ``"square"`` (``square=True``) or ``"stretch"``. Returns float32 [N, size, size]."""
    return crop_regions_weighted(image, boxes, margin, size, "square" if square else "stretch", "shift",
                                 min_side)[0]


def latent_weights(pixel_weights: np.ndarray, latent_hw: tuple[int, int]) -> np.ndarray:
    """Pixel weights [N, S, S] averaged onto the latent grid [N, h, w] (S must be a multiple of h and w)."""
    wt = np.asarray(pixel_weights, dtype=np.float64)
    N, S, S2 = wt.shape
    h, w = latent_hw
    if S % h or S2 % w:
        raise ValueError(f"crop side {S}x{S2} is not a multiple of the latent grid {h}x{w}")
    return wt.reshape(N, h, S // h, w, S2 // w).mean(axis=(2, 4))


def weighted_scores(e_map: np.ndarray, v_map: np.ndarray, weights: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(E_rec [N], V_den [N]) as weighted means of the per-position maps [N, h, w] (None = plain means).

    A row whose weights sum to 0 falls back to the plain mean."""
    e_map = np.asarray(e_map, dtype=np.float64)
    v_map = np.asarray(v_map, dtype=np.float64)
    if weights is None:
        return e_map.mean(axis=(1, 2)), v_map.mean(axis=(1, 2))
    wt = np.asarray(weights, dtype=np.float64)
    if wt.shape != e_map.shape:
        raise ValueError(f"weights {wt.shape} do not match the maps {e_map.shape}")
    tot = wt.sum(axis=(1, 2))
    wt = np.where(tot[:, None, None] > 0, wt, 1.0)
    tot = wt.sum(axis=(1, 2))
    return (e_map * wt).sum(axis=(1, 2)) / tot, (v_map * wt).sum(axis=(1, 2)) / tot
