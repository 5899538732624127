"""Why an image was picked (spec §7): a rationale per pick, as JSON and as one readable sentence.

The rationale holds A(x) and its terms, their split into difficulty and rarity contributions, the
driving proposal (box, D(p), S(p), its concept and how sure Eq. 3 was: the margin over the runner-up
concept), and that concept's semantic path fine -> coarse -> abstract with counts n(v) and
thresholds tau. `sentence` turns it into one line for the annotator.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gsal_edge.acquisition.concept_graph import BACKGROUND, UNKNOWN, ConceptGraph
from gsal_edge.acquisition.config import GSALConfig
from gsal_edge.acquisition.fusion import FusionResult
from gsal_edge.acquisition.rarity import Coverage, indicator
from gsal_edge.acquisition.score_pool import ScorePool

__all__ = ["concept_margin", "rationale", "sentence"]


def _num(x: float) -> float | int:
    x = float(x)
    return int(x) if x.is_integer() and abs(x) < 2**53 else x


def _fmt(x: float) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() else f"{x:.3g}"


def _node(name: str, n: float, tau: float, r: float) -> dict[str, Any]:
    return {"name": name, "count": _num(n), "tau": _num(tau), "rare": bool(n < tau), "indicator": float(r)}


def concept_margin(similarity: dict[str, float], concept: str) -> tuple[str, float, float] | None:
    """How sure Eq. 3 was: (runner-up concept, its similarity, sim(concept) - that); None without a rival."""
    if concept not in similarity or len(similarity) < 2:
        return None
    other, s2 = max(((c, v) for c, v in similarity.items() if c != concept), key=lambda cv: cv[1])
    return other, s2, similarity[concept] - s2


def rationale(pool: ScorePool, graph: ConceptGraph, res: FusionResult, config: GSALConfig, i: int,
              rank: int) -> dict[str, Any]:
    """Why image ``i`` was picked: A and its terms, the driving proposal (box, D, S), its semantic
    path fine -> coarse -> abstract with counts n(v) and thresholds tau, and the dominant term.

    Attribution: A = z(G) + lambda z(S(x)) and, G having mean 0 over the pool, z(G) = G / (std(G) + 1e-8)
    = [(1 - eta) z(D_img) + eta z(P)] / (std(G) + 1e-8). The region term eta z(P) is split between
    difficulty and rarity in proportion to the positive parts of z(D(p)) and gamma z(S(p)) of the
    proposal with the largest u_p. "rarity" dominates when lambda z(S(x)) plus the region's rarity
    share exceeds the image and region difficulty shares.
    """
    cov = res.coverage
    tbl = res.table
    s, e = int(pool.starts[i]), int(pool.starts[i + 1])
    scale = float(res.G_scale[i]) if res.G_scale is not None else 1.0
    c_img = float((1.0 - config.eta) * res.zD_img[i]) / scale
    c_region = float(config.eta * res.zP[i]) / scale
    c_sym = float(config.lambda_ * res.zS_x[i])
    w_d = w_s = 0.0
    k_u = -1
    if e > s:
        k_u = int(np.argmax(res.u[s:e]))
        pd = max(float(res.zD_p[s + k_u]), 0.0)
        ps = max(float(config.gamma * res.zS_p[s + k_u]), 0.0)
        w_d, w_s = (pd / (pd + ps), ps / (pd + ps)) if pd + ps > 0 else (0.5, 0.5)
    difficulty = c_img + c_region * w_d
    rarity = c_sym + c_region * w_s
    dominant = "rarity" if (rarity > difficulty and res.S_x[i] > 0) else "difficulty"
    out: dict[str, Any] = {
        "rank": rank,
        "image_id": str(pool.image_ids[i]),
        "acquisition": float(res.A[i]),
        "terms": {
            "z_G": float(res.zG[i]), "lambda_z_S_x": c_sym,
            "G": float(res.G[i]), "eta_z_P": float(config.eta * res.zP[i]),
            "one_minus_eta_z_D_img": float((1.0 - config.eta) * res.zD_img[i]),
            "P": float(res.P[i]), "z_P": float(res.zP[i]),
            "D_img": float(res.D_img[i]), "z_D_img": float(res.zD_img[i]),
            "S_x": float(res.S_x[i]), "z_S_x": float(res.zS_x[i]),
            **({"nu_z_U": float(config.nu * res.zU[i])} if res.zU is not None else {}),
        },
        "contributions": {
            "image_difficulty": c_img, "region_difficulty": c_region * w_d,
            "region_rarity": c_region * w_s, "concept_rarity": c_sym,
            "difficulty": difficulty, "rarity": rarity,
        },
        "n_proposals": e - s,
        "dominant": dominant,
        "thresholds": {"tau_f": _num(cov.tau_f), "tau_c": _num(cov.tau_c), "tau_a": _num(cov.tau_a)},
    }
    if e == s:
        out["driver"] = "hard image"
        out["proposal"] = None
        out["path"] = None
        out["novel"] = False
        return out
    if dominant == "rarity":
        # the proposal that earned S(x) = max S(p); among equals, the one with the largest u_p
        k = int(np.lexsort((-res.u[s:e], -res.S_p[s:e]))[0])
    else:
        k = k_u
    j = s + k
    ci = int(res.concept_index[j])
    novel = ci == tbl.unknown_index
    concept = UNKNOWN if novel else graph.fine[ci]
    sim: dict[str, float] = {}
    if pool.similarity is not None:
        sim = {c: float(v) for c, v in zip(pool.concepts, pool.similarity[j]) if not math.isnan(v)}
    prop = {
        "index": k, "box": [float(v) for v in pool.prop_box[j]], "score": float(pool.prop_score[j]),
        "e_rec": float(pool.prop_e_rec[j]), "v_den": float(pool.prop_v_den[j]),
        "D": float(res.D_p[j]), "z_D": float(res.zD_p[j]), "S": float(res.S_p[j]), "z_S": float(res.zS_p[j]),
        "u": float(res.u[j]), "concept": concept, "record_concept": pool.concepts[int(pool.prop_concept[j])],
        "r_f": float(tbl.r_f[ci]), "r_c": float(tbl.r_c[ci]), "r_a": float(tbl.r_a[ci]),
        "similarity": sim,
    }
    close = concept_margin(sim, concept)
    if close is not None:
        prop["runner_up"] = {"concept": close[0], "similarity": close[1]}
        prop["margin"] = close[2]
    if res.probabilities is not None and not novel and res.probabilities[j].sum() > 0:
        prop["probabilities"] = {f: float(p) for f, p in zip(graph.fine, res.probabilities[j])}
    out["proposal"] = prop
    out["novel"] = bool(novel)
    if novel:
        out["path"] = {"fine": {"name": UNKNOWN, "count": 0, "tau": _num(cov.tau_f), "rare": True, "indicator": 1.0},
                       "coarse": None, "abstract": [],
                       "note": "unknown: matches no known concept, counted as never covered at every level"}
        if sim:
            out["path"]["best_similarity"] = max(sim.values())
    elif concept == BACKGROUND:
        out["path"] = {"fine": {"name": BACKGROUND, "count": _num(cov.n_fine[ci]), "tau": None, "rare": False,
                                "indicator": 0.0},
                       "coarse": None, "abstract": [], "note": "background never earns a rarity bonus"}
    else:
        ind = _indicators(cov, config)
        fi, cc, attrs = graph.path(concept)
        c_i = graph.coarse_index_of[cc]
        out["path"] = {
            "fine": _node(fi, cov.n_fine[ci], cov.tau_f, ind[0][ci]),
            "coarse": _node(cc, cov.n_coarse[c_i], cov.tau_c, ind[1][c_i]),
            "abstract": [_node(a, cov.n_abstract[graph.abstract_index_of[a]], cov.tau_a,
                               ind[2][graph.abstract_index_of[a]]) for a in attrs],
        }
    if dominant == "rarity":
        out["driver"] = "novel concept" if novel else "rare concept"
    else:
        out["driver"] = "hard region" if c_region * w_d >= c_img else "hard image"
    return out


def _indicators(cov: Coverage, config: GSALConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not config.rarity:
        return np.ones_like(cov.n_fine), np.ones_like(cov.n_coarse), np.ones_like(cov.n_abstract)
    return (indicator(cov.n_fine, cov.tau_f, config.thresholds),
            indicator(cov.n_coarse, cov.tau_c, config.thresholds),
            indicator(cov.n_abstract, cov.tau_a, config.thresholds))


def sentence(r: dict[str, Any], config: GSALConfig | None = None) -> str:
    """One readable sentence from a rationale, e.g. "picked for a rare concept: drill_hole
    (0 labeled, tau_f = 3) in a hard region"; when the driving concept beat the runner-up's similarity
    by less than ``rationale_margin``, it says so ("; concept uncertain: ...")."""
    prop = r.get("proposal")
    if prop is None:
        return (f"picked for a hard image: whole-image difficulty z(D_img) = {r['terms']['z_D_img']:.2f}, "
                "no proposals")
    text = _sentence(r, prop, config)
    margin = prop.get("margin")
    limit = (config or GSALConfig()).rationale_margin
    if margin is not None and margin < limit and not r.get("novel"):
        ru = prop["runner_up"]
        text += (f"; concept uncertain: {prop['concept']} {prop['similarity'][prop['concept']]:.2f} vs "
                 f"{ru['concept']} {ru['similarity']:.2f}")
    return text


def _sentence(r: dict[str, Any], prop: dict[str, Any], config: GSALConfig | None) -> str:
    where = "a hard region" if prop["z_D"] > 0 else "a typical region"
    path = r["path"]
    if r["dominant"] == "rarity":
        if r["novel"]:
            best = path.get("best_similarity")
            thr = config.novelty_threshold if config is not None else None
            detail = (f" (best similarity {best:.2f} < threshold {thr:.2f})"
                      if best is not None and thr is not None else "")
            return (f"picked for a novel concept: unknown{detail}, counted as never covered, in {where}")
        fine, coarse = path["fine"], path["coarse"]
        if fine["rare"]:
            return (f"picked for a rare concept: {fine['name']} ({_fmt(fine['count'])} labeled, "
                    f"tau_f = {_fmt(fine['tau'])}) in {where}")
        if coarse is not None and coarse["rare"]:
            return (f"picked for a rare family: {coarse['name']} ({_fmt(coarse['count'])} labeled, "
                    f"tau_c = {_fmt(coarse['tau'])}) via {fine['name']} in {where}")
        rare_attrs = [a for a in path["abstract"] if a["rare"]]
        if rare_attrs:
            names = ", ".join(f"{a['name']} ({_fmt(a['count'])} labeled)" for a in rare_attrs)
            return (f"picked for rare attributes: {names}, tau_a = {_fmt(rare_attrs[0]['tau'])}, "
                    f"via {fine['name']} in {where}")
        return f"picked for its semantic bonus S(x) = {r['terms']['S_x']:.2f} via {fine['name']} in {where}"
    concept = prop["concept"]
    fine = path["fine"] if path else None
    if fine is not None and concept not in (BACKGROUND, UNKNOWN):
        state = "rare" if fine["rare"] else "covered"
        cov_txt = f" ({_fmt(fine['count'])} labeled, tau_f = {_fmt(fine['tau'])}, {state})"
    else:
        cov_txt = ""
    if r["driver"] == "hard region":
        return (f"picked for a hard region: {concept}{cov_txt} proposal with z(D) = {prop['z_D']:.2f} "
                f"at [{', '.join(f'{v:g}' for v in prop['box'])}]")
    return (f"picked for a hard image: whole-image difficulty z(D_img) = {r['terms']['z_D_img']:.2f}; "
            f"strongest proposal {concept}{cov_txt}")
