"""Measure the embedded default models (issue 4, "Must show").

1. CLIP: zero-shot Eq. 3 accuracy (graph text prompts) on held-out ground-truth crops of the POOL
   generator (default SynthConfig, a seed never used for training), per class, vs. the prototype
   assigner with 5 exemplars per concept; confusion matrices saved as a PNG.
2. Diffusion difficulty: AUROC of crop-level E_rec and V_den (and D = z(E) + z(V), equal weights)
   for defect regions vs. same-size background regions, and defect vs. benign look-alike regions,
   in both proposal modes: ``crop`` and ``latent_roi`` (mean and max reduce); per class, the median crop
   E_rec too (the magnitude decides which defects GSAL's D(p) ranks first, not only the AUROC).
   Polarity probe: the same Gaussian blob added bright or dark to the background crops (amplitude
   ``--blob-amplitude`` in unit intensity, about the defects' contrast): a prior that treats both
   polarities alike raises E_rec by the same amount.
3. Training time and model size, read from the models' own records.

    .venv/bin/python bench/eval_models.py --models artifacts/models --out artifacts/eval_models

Writes ``results.json`` and ``confusion.png`` under --out and prints a summary.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import typer

from gsal_edge.acquisition import diffusion_difficulty as dd

app = typer.Typer(add_completion=False)


# ---------------------------------------------------------------------- helpers (pure)
def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score(pos) > score(neg)) + 0.5 P(tie): the Mann-Whitney AUROC."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if not len(pos) or not len(neg):
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks for ties
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _overlaps(b: np.ndarray, others: list[tuple[float, ...]], gap: float) -> bool:
    for o in others:
        if b[0] < o[2] + gap and o[0] < b[2] + gap and b[1] < o[3] + gap and o[1] < b[3] + gap:
            return True
    return False


def background_box(rng: np.random.Generator, w: float, h: float, H: int, W: int,
                   taken: list[tuple[float, ...]], gap: float = 4.0, tries: int = 200,
                   y: float | None = None) -> tuple[float, ...] | None:
    """A w x h box at a uniform position that keeps ``gap`` px from every box in ``taken``
    (with ``y``: at that top row, i.e. in the same layer band as the box it matches)."""
    for _ in range(tries):
        x0, y0 = rng.uniform(0, W - w), (rng.uniform(0, H - h) if y is None else y)
        b = np.array([x0, y0, x0 + w, y0 + h])
        if not _overlaps(b, taken, gap):
            return tuple(float(v) for v in b)
    return None


def add_blob(crops: np.ndarray, amplitude: float, sigma: float) -> np.ndarray:
    """[N,S,S] crops in [0,1] with a centred Gaussian blob of peak ``amplitude`` (negative = dark), clipped."""
    S = crops.shape[-1]
    yy, xx = np.mgrid[:S, :S]
    c = (S - 1) / 2
    blob = np.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (2 * sigma ** 2))
    return np.clip(crops + amplitude * blob[None], 0.0, 1.0).astype(np.float32)


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-8)


# ---------------------------------------------------------------------- data
def pool_slices(n: int, seed: int) -> list[Any]:
    """Held-out slices of the POOL generator (default SynthConfig) with a seed never trained on."""
    from gsal_edge.data.synthetic.config import SynthConfig
    from gsal_edge.data.synthetic.generator import iter_slices

    return list(iter_slices(SynthConfig(), n, seed))


def region_sets(slices: list[Any], seed: int) -> list[dict[str, Any]]:
    """Per slice: unit image, defect boxes+classes, look-alike boxes+types, same-size background boxes."""
    from gsal_edge.data.preprocessing import to_unit_float

    rng = np.random.default_rng([seed, 3])
    out = []
    for s in slices:
        img = to_unit_float(s.image)
        H, W = img.shape
        taken = [tuple(a.box) for a in s.annotations] + [tuple(lk["box"]) for lk in s.lookalikes]
        bgs: list[tuple[float, ...]] = []
        matched: list[tuple[float, ...]] = []
        for a in s.annotations:
            w, h = a.box[2] - a.box[0], a.box[3] - a.box[1]
            b = background_box(rng, w, h, H, W, taken + bgs)
            if b is not None:
                bgs.append(b)
            b = background_box(rng, w, h, H, W, taken + bgs + matched, y=a.box[1])
            if b is not None:
                matched.append(b)
        out.append({
            "id": s.image_id, "image": img,
            "defects": [tuple(a.box) for a in s.annotations], "classes": [a.category for a in s.annotations],
            "lookalikes": [tuple(lk["box"]) for lk in s.lookalikes], "lookalike_types": [lk["type"] for lk in s.lookalikes],
            "background": bgs, "matched": matched,
        })
    return out


# ---------------------------------------------------------------------- diffusion
def eval_diffusion(prior_dir: Path, regions: list[dict[str, Any]], K: int, t_fracs: list[float], base_seed: int,
                   margin: float, batch: int, blob_amplitude: float = 0.065,
                   blob_sigmas: tuple[float, ...] = (0.09, 0.16)) -> dict[str, Any]:
    """AUROCs of E_rec(p), V_den(p), D(p) for defect vs background / look-alike in both proposal modes."""
    from gsal_edge.models.diffusion_prior import DiffusionPrior

    prior = DiffusionPrior.from_pretrained(prior_dir)
    res: dict[str, Any] = {"prior": prior.info(), "K": K, "margin": margin, "by_t": {}}
    groups = ("defects", "background", "matched", "lookalikes")
    imgs = np.stack([r["image"] for r in regions])
    z0 = prior.encode(imgs)  # [N, c, h, w] at the prior's resolution
    crop_sets = {g: [] for g in groups}
    crop_ids = {g: [] for g in groups}
    for r in regions:
        for g in groups:
            if r[g]:
                crop_sets[g].extend(dd.crop_regions(r["image"], r[g], margin, prior.crop_resolution))
                crop_ids[g].extend(f"{r['id']}#{g[0]}{j}" for j in range(len(r[g])))
    crop_z = {g: prior.encode(np.stack(crop_sets[g]), size=prior.crop_resolution) if crop_sets[g] else None
              for g in groups}
    classes = [c for r in regions for c in r["classes"]]
    la_types = [t for r in regions for t in r["lookalike_types"]]
    res["counts"] = {"defects": len(classes), "background": len(crop_ids["background"]),
                     "matched_background": len(crop_ids["matched"]),
                     "lookalikes": len(la_types), "defect_classes": dict(Counter(classes)),
                     "lookalike_types": dict(Counter(la_types))}
    for t_frac in t_fracs:
        t_index = dd.timestep_index(t_frac, prior.num_train_timesteps)
        t0 = time.perf_counter()
        zhat = dd.reconstruct(z0, [r["id"] for r in regions], prior.predict_eps, prior.alphas_cumprod, K, t_index,
                              base_seed, max_batch=batch)
        _, _, e_map, v_map = dd.difficulty(z0, zhat)
        scores: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        for reduce in ("mean", "max"):
            mode = f"latent_roi_{reduce}"
            scores[mode] = {}
            for g in groups:
                E, V = [], []
                for i, r in enumerate(regions):
                    if r[g]:
                        e, v = dd.roi_scores(e_map[i], v_map[i], r[g], r["image"].shape, margin, reduce)
                        E.append(e)
                        V.append(v)
                scores[mode][g] = {"E": np.concatenate(E), "V": np.concatenate(V)}

        def crop_difficulty(z: np.ndarray, ids: list[str], t_index: int = t_index) -> tuple[np.ndarray, np.ndarray]:
            zh = dd.reconstruct(z, ids, prior.predict_eps, prior.alphas_cumprod, K, t_index, base_seed,
                                max_batch=batch)
            E, V, _, _ = dd.difficulty(z, zh)
            return E, V

        scores["crop"] = {}
        for g in groups:
            E, V = crop_difficulty(crop_z[g], crop_ids[g])
            scores["crop"][g] = {"E": E, "V": V}
        polarity: dict[str, Any] = {"amplitude": blob_amplitude,
                                    "none": round(float(scores["crop"]["background"]["E"].mean()), 5)}
        bg = np.stack(crop_sets["background"])
        for frac in blob_sigmas:  # blob sigma as a fraction of the crop side
            for name, sign in (("bright", 1.0), ("dark", -1.0)):
                x = add_blob(bg, sign * blob_amplitude, frac * prior.crop_resolution)
                E, _ = crop_difficulty(prior.encode(x, size=prior.crop_resolution), crop_ids["background"])
                polarity[f"{name}_sigma{frac}"] = round(float(E.mean()), 5)
        out: dict[str, Any] = {"t_index": t_index, "abar_t": float(prior.alphas_cumprod[t_index]),
                               "seconds": round(time.perf_counter() - t0, 1)}
        for mode, sc in scores.items():
            n_d, n_b, n_m, _ = (len(sc[g]["E"]) for g in groups)
            E_all = np.concatenate([sc[g]["E"] for g in groups])
            V_all = np.concatenate([sc[g]["V"] for g in groups])
            D_all = 0.5 * _zscore(E_all) + 0.5 * _zscore(V_all)  # Eq. 7 over this population
            split = np.cumsum([n_d, n_b, n_m])
            m: dict[str, Any] = {}
            for name, arr in (("E_rec", E_all), ("V_den", V_all), ("D", D_all)):
                d_, b_, mb_, l_ = np.split(arr, split)
                m[name] = {"defect_vs_background": round(auroc(d_, b_), 4),
                           "defect_vs_matched_background": round(auroc(d_, mb_), 4),
                           "defect_vs_lookalike": round(auroc(d_, l_), 4)}
                if name == "E_rec":
                    m[name]["per_class_median"] = {
                        c: round(float(np.median(d_[np.array(classes) == c])), 5) for c in sorted(set(classes))}
                    m[name]["background_median"] = round(float(np.median(b_)), 5)
                    m[name]["per_class_vs_background"] = {
                        c: round(auroc(d_[np.array(classes) == c], b_), 4) for c in sorted(set(classes))}
                    m[name]["per_lookalike_vs_background"] = {
                        t: round(auroc(l_[np.array(la_types) == t], b_), 4) for t in sorted(set(la_types))}
            out[mode] = m
        out["crop_polarity_probe"] = polarity
        res["by_t"][str(t_frac)] = out
    return res


# ---------------------------------------------------------------------- CLIP
def eval_clip(clip_dir: Path, graph_name: str, slices: list[Any], n_exemplars: int, margin: float,
              seed: int, png: Path) -> dict[str, Any]:
    """Zero-shot text assignment vs. prototype assignment on held-out pool crops; confusion PNG."""
    from gsal_edge.acquisition.assignment import assign, make_assigner
    from gsal_edge.acquisition.concept_graph import BACKGROUND, load_graph
    from gsal_edge.models.clip_model import ClipModel, concept_text_embeddings

    clip = ClipModel.from_folder(clip_dir)
    graph = load_graph(graph_name)
    names = list(graph.fine)
    regions = region_sets(slices, seed)
    crops, truth = [], []
    for r in regions:
        for key, labels in (("defects", r["classes"]), ("background", [BACKGROUND] * len(r["background"])),
                            ("lookalikes", [f"lookalike:{t}" for t in r["lookalike_types"]])):
            if r[key]:
                crops.extend(dd.crop_regions(r["image"], r[key], margin, clip.image_size))
                truth.extend(labels)
    crops_a = np.stack(crops)
    truth_a = np.array(truth)
    emb = clip.encode_images(crops_a)
    text = concept_text_embeddings(clip, {c: list(graph.prompts(c)) for c in names})
    T = np.stack([text[c] for c in names])

    # exemplars: the first n_exemplars crops of each concept (in generation order) are held out of the test set
    rng = np.random.default_rng([seed, 5])
    ex_idx = {}
    for c in names:
        idx = np.flatnonzero(truth_a == c)
        if len(idx) < n_exemplars + 1:
            raise SystemExit(f"only {len(idx)} crops of {c!r}: raise --n-clip")
        ex_idx[c] = rng.choice(idx, n_exemplars, replace=False)
    is_ex = np.zeros(len(truth_a), bool)
    for v in ex_idx.values():
        is_ex[v] = True
    test = ~is_ex
    text_pred = np.array(assign(emb, names, T).concepts)
    proto = make_assigner("prototype", names, T, {c: emb[ex_idx[c]] for c in names})
    proto_pred = np.array(proto(emb).concepts)

    def report(pred: np.ndarray) -> dict[str, Any]:
        per = {}
        for c in names:
            m = test & (truth_a == c)
            per[c] = {"n": int(m.sum()), "acc": round(float((pred[m] == c).mean()), 4) if m.any() else None}
        d = test & np.isin(truth_a, graph.defects)
        la = test & np.char.startswith(truth_a.astype(str), "lookalike:")
        dm = d & (pred != BACKGROUND)
        return {
            "per_class": per,
            "defect_acc": round(float((pred[d] == truth_a[d]).mean()), 4),
            "defect_balanced_acc": round(float(np.mean([per[c]["acc"] for c in graph.defects])), 4),
            "all_concepts_balanced_acc": round(float(np.mean([per[c]["acc"] for c in names])), 4),
            "defect_acc_given_not_background": round(float((pred[dm] == truth_a[dm]).mean()), 4) if dm.any() else None,
            "lookalike_called_background": round(float((pred[la] == BACKGROUND).mean()), 4) if la.any() else None,
            "lookalike_predictions": dict(Counter(pred[la].tolist())),
        }

    rows = names + sorted({t for t in truth_a if t.startswith("lookalike:")})

    def confusion(pred: np.ndarray) -> np.ndarray:
        M = np.zeros((len(rows), len(names)), int)
        for t, p in zip(truth_a[test], pred[test]):
            M[rows.index(t), names.index(p)] += 1
        return M

    res = {"clip": clip.info(), "graph": graph.name, "margin": margin, "n_exemplars": n_exemplars,
           "n_test_crops": int(test.sum()), "text": report(text_pred), "prototype": report(proto_pred)}
    _plot_confusions(png, rows, names, {"zero-shot text (Eq. 3)": confusion(text_pred),
                                        f"prototype ({n_exemplars} exemplars)": confusion(proto_pred)})
    res["confusion"] = {"rows": rows, "cols": names, "text": confusion(text_pred).tolist(),
                        "prototype": confusion(proto_pred).tolist()}
    return res


def _plot_confusions(png: Path, rows: list[str], cols: list[str], mats: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(mats), figsize=(6.2 * len(mats), 0.5 * len(rows) + 2.5))
    for ax, (title, M) in zip(np.atleast_1d(axes), mats.items()):
        frac = M / np.maximum(M.sum(1, keepdims=True), 1)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for i in range(M.shape[0]):
            for j in range(M.shape[1]):
                ax.text(j, i, f"{M[i, j]}", ha="center", va="center", fontsize=8,
                        color="white" if frac[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(cols)), cols, rotation=40, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel("assigned concept")
        ax.set_ylabel("true region")
        ax.set_title(title)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- main
@app.command()
def main(
    models: Path = typer.Option(Path("artifacts/models"), help="train-defaults output (diffusion/, clip/)"),
    out: Path = typer.Option(Path("artifacts/eval_models"), help="results.json and confusion.png go here"),
    n_diff: int = typer.Option(300, help="held-out pool slices for the diffusion AUROCs"),
    n_clip: int = typer.Option(1500, help="held-out pool slices for the CLIP accuracy"),
    seed: int = typer.Option(424242, help="held-out pool seed (never used for training)"),
    K: int = typer.Option(4, help="trajectories per image / crop"),
    t_fracs: str = typer.Option("0.25", help="comma-separated t/T values to measure"),
    margin: float = typer.Option(1.5, help="context margin"),
    graph: str = typer.Option("thin_film_ct", help="concept graph for Eq. 3"),
    n_exemplars: int = typer.Option(5, help="exemplars per concept for the prototype assigner"),
    batch: int = typer.Option(64, help="UNet batch"),
    blob_amplitude: float = typer.Option(0.065, help="polarity probe: blob peak in unit intensity"),
    threads: int = typer.Option(1, help="torch threads"),
    skip_clip: bool = typer.Option(False), skip_diffusion: bool = typer.Option(False),
) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"models": str(models), "seed": seed}
    for name in ("defaults.json",):
        if (models / name).is_file():
            results["build"] = json.loads((models / name).read_text())
    results["sizes_bytes"] = {
        str(f.relative_to(models)): f.stat().st_size
        for f in sorted(models.glob("*/**/*.safetensors")) if "checkpoints" not in f.parts}
    slices = pool_slices(max(n_diff, n_clip), seed)
    if not skip_diffusion:
        t0 = time.perf_counter()
        results["diffusion"] = eval_diffusion(models / "diffusion", region_sets(slices[:n_diff], seed), K,
                                              [float(v) for v in t_fracs.split(",")], base_seed=0, margin=margin,
                                              batch=batch, blob_amplitude=blob_amplitude)
        results["diffusion"]["eval_seconds"] = round(time.perf_counter() - t0, 1)
    if not skip_clip:
        t0 = time.perf_counter()
        results["clip"] = eval_clip(models / "clip", graph, slices[:n_clip], n_exemplars, margin, seed,
                                    out / "confusion.png")
        results["clip"]["eval_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    _print_summary(results)


def _print_summary(r: dict[str, Any]) -> None:
    if r.get("sizes_bytes"):
        print("weights on disk: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in r["sizes_bytes"].items()))
    if r.get("build"):
        b = r["build"]
        print(f"train-defaults build: {b['wall_seconds']} s wall (parallel={b['parallel']}); diffusion "
              f"{b['diffusion']['train']['wall_seconds']} wall / {b['diffusion']['train']['cpu_seconds']} cpu; clip "
              f"{b['clip']['train']['wall_seconds']} wall / {b['clip']['train']['cpu_seconds']} cpu")
    if "diffusion" in r:
        d = r["diffusion"]
        print(f"diffusion prior: {d['prior']}")
        print(f"regions: {d['counts']}")
        for t, m in d["by_t"].items():
            print(f"t/T={t} (t={m['t_index']}, abar={m['abar_t']:.3f}, {m['seconds']} s)")
            for mode in ("crop", "latent_roi_mean", "latent_roi_max"):
                row = "  ".join(f"{s}: bg {m[mode][s]['defect_vs_background']:.3f} "
                                f"same-rows {m[mode][s]['defect_vs_matched_background']:.3f} "
                                f"la {m[mode][s]['defect_vs_lookalike']:.3f}" for s in ("E_rec", "V_den", "D"))
                print(f"  {mode:16s} {row}")
                print(f"  {'':16s} E_rec per class vs bg: {m[mode]['E_rec']['per_class_vs_background']}"
                      f"  look-alike types vs bg: {m[mode]['E_rec']['per_lookalike_vs_background']}")
                print(f"  {'':16s} E_rec median per class: {m[mode]['E_rec']['per_class_median']}"
                      f" (background {m[mode]['E_rec']['background_median']})")
            print(f"  crop polarity probe (mean background-crop E_rec): {m['crop_polarity_probe']}")
    if "clip" in r:
        c = r["clip"]
        print(f"CLIP {c['clip']['model_name']} ({c['clip']['params']} params), test crops {c['n_test_crops']}")
        for kind in ("text", "prototype"):
            k = c[kind]
            per = ", ".join(f"{n} {v['acc']} (n={v['n']})" for n, v in k["per_class"].items())
            print(f"  {kind:9s} per class: {per}")
            print(f"  {'':9s} defect acc {k['defect_acc']}, defect balanced {k['defect_balanced_acc']}, "
                  f"all balanced {k['all_concepts_balanced_acc']}, look-alikes called background "
                  f"{k['lookalike_called_background']}")


if __name__ == "__main__":
    app()
