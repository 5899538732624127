"""`GSALConfig`: every parameter of the GSAL spec (``GSAL_SPEC.md``) with its default, plus the
switches marked **[ours]** there.

Loaded from YAML (``GSALConfig.from_yaml``) and overridden from the CLI with ``--set name=value``
(``GSALConfig.with_overrides``). Errors name the file, the line and the field that was wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator

from gsal_edge.config_files import CONFIGS_DIR, FrozenModel, read_yaml_with_lines
from gsal_edge.errors import GSALError

__all__ = [
    "LEVELS",
    "ConfigError",
    "GSALConfig",
    "ScreeningConfig",
]

LEVELS: tuple[str, str, str] = ("fine", "coarse", "abstract")


class ConfigError(GSALError, ValueError):
    """A configuration file or override is invalid; the message names file, line and field."""


class ScreeningConfig(FrozenModel):
    """Spec §7 optional screening stage **[ours]** (off by default; its effect is measured).

    A cheap score c(x) = z(E_rec_img(x)) + score_weight * z(max_p score(p)) ranks the pool; only the
    top ``max(min_keep, ceil(keep_factor * b))`` images keep their full GSAL score, the rest are
    dropped from the pool before fusion (on a station: never sent through the K diffusion
    trajectories).
    """

    enabled: bool = Field(False, description="[ours] screening on/off (spec §7: off by default).")
    keep_factor: float = Field(
        4.0, gt=0, description="[ours] keep the top ceil(keep_factor * b) images by the cheap score."
    )
    min_keep: int = Field(0, ge=0, description="[ours] keep at least this many images.")
    score_weight: float = Field(
        1.0, ge=0, description="[ours] weight of z(detector max-score) next to z(E_rec_img) in c(x)."
    )


class GSALConfig(FrozenModel):
    """All GSAL parameters (spec §§2-7, 10). Defaults are the spec's; [ours] marks our choices."""

    model_config = ConfigDict(populate_by_name=True)

    # --- Eqs. 7/8: D = alpha * z(E_rec) + beta * z(V_den)
    alpha: float = Field(0.5, ge=0, description="Eq. 7/8 weight of z(E_rec).")
    beta: float = Field(0.5, ge=0, description="Eq. 7/8 weight of z(V_den).")
    # --- Eq. 9: u_p = z(D(p)) + gamma * z(S(p)); P(x) = generalized mean with exponent rho
    gamma: float = Field(0.5, ge=0, description="Eq. 9 weight of z(S(p)) in u_p.")
    rho: float = Field(3.0, gt=0, description="Eq. 9 generalized-mean exponent (1 = mean pooling).")
    pool_norm: Literal["M_x", "M"] = Field(
        "M_x", description="Eq. 9 divisor: 'M_x' = the image's proposal count (P = how hard its proposals are "
        "on average); 'M' [ours] = the prefilter size with empty slots at 0 (P also counts hard proposals).")
    # --- Eq. 10: G(x) = eta * z(P(x)) + (1 - eta) * z(D_img(x)); A(x) = z(G) + lambda * z(S(x))
    eta: float = Field(0.5, ge=0, le=1, description="Eq. 10 weight of z(P(x)) vs z(D_img(x)).")
    lambda_: float = Field(0.5, ge=0, alias="lambda", description="A(x) weight of z(S(x)).")
    # --- Eq. 4: S(p) = r_f + r_c + mu * r_a, thresholds = percentile of level counts
    mu: float = Field(0.5, ge=0, description="Eq. 4 abstract-level weight.")
    percentile: float = Field(
        80.0, ge=0, le=100, description="Dynamic threshold percentile tau (spec §3, §10; floor 1)."
    )
    thresholds: Literal["hard", "soft", "relative"] = Field(
        "hard", description="[ours] 'soft' replaces 1[n < tau] by max(0, 1 - n / tau); 'relative' (small graphs: "
        "the 80th percentile of 2-5 counts leaves only the most covered node non-rare) takes tau = the level's "
        "mean count (floor 1) and r = tau / (tau + n), so every difference in coverage changes S(p)."
    )
    levels: tuple[Literal["fine", "coarse", "abstract"], ...] = Field(
        LEVELS,
        description="[ours] graph levels that contribute to S(p) (graph ablations, spec §8); "
        "abstract keeps its weight mu.",
    )
    rarity: bool = Field(
        True,
        description="[ours] False = 'w/o rarity' ablation: every indicator is 1 for a non-background "
        "concept, so S(p) rewards a named concept regardless of its coverage n(v).",
    )
    # --- Eqs. 5-8 (diffusion difficulty; consumed by the scorer)
    K: int = Field(4, ge=1, description="Eqs. 5-6 number of seeded stochastic reconstructions.")
    t_frac: float = Field(0.1, gt=0, le=1, description="Noising timestep t as a fraction of T (paper: 0.25; "
                          "0.1 ranks the same slices far more stably with the same defect AUROC, docs/results.md).")
    ddim_steps: int = Field(
        0, ge=0, description="[ours] 0 = one-step x0 prediction; S > 0 = S DDIM steps from t to 0."
    )
    noise: Literal["per_image", "common"] = Field(
        "common", description="[ours] eps_k seeded per image id, or 'common' random numbers: the same K "
        "draws for every slice and crop, so slices differ by content only (spec §4).")
    antithetic: bool = Field(False, description="[ours] antithetic pairs: eps_(2j+1) = -eps_(2j).")
    M: int = Field(8, ge=1, description="Proposal prefilter: top-M detector boxes by score (spec §4).")
    min_score: float = Field(0.0, ge=0, le=1, description="Detections scoring below this never become proposals.")
    proposal_nms_iou: float | None = Field(
        None, gt=0, le=1, description="[ours] class-agnostic NMS at this IoU before the top-M cut, so one region "
        "cannot take several slots under different labels (None = the detector's per-class NMS only).")
    context_margin: float = Field(1.5, ge=1, description="Proposal region = box enlarged by this factor.")
    proposal_mode: Literal["crop", "latent_roi"] = Field(
        "crop", description="'crop' = the paper's literal reading; 'latent_roi' = [ours] (spec §4)."
    )
    roi_reduce: Literal["mean", "max"] = Field("mean", description="[ours] latent_roi reduction.")
    # --- [ours] issue 16 difficulty switches (helper `difficulty`; measured in docs/results.md)
    K_image: int | None = Field(16, ge=1, description="[ours] trajectories of the whole-slice E_rec/V_den only "
                                "(None = K; paper: K). dev-a: D_img seed-to-seed Spearman 0.92 at 4, 0.98 at 16; "
                                "the image term is cached per slice in the benchmark, proposal crops keep K.")
    crop_shape: Literal["square", "stretch", "masked"] = Field(
        "square", description="[ours] diffusion crop of a proposal: 'square' (long side, context), 'stretch' "
        "(own aspect, resized), 'masked' (square with context, E_rec/V_den over the enlarged box only).")
    crop_border: Literal["shift", "reflect"] = Field(
        "reflect", description="[ours] a crop crossing the image edge: 'shift' inside (paper-era), or 'reflect' "
        "(centred, the outside filled by reflection and masked out of E_rec/V_den; dev-a/dev-b: border background "
        "D(p) AUROC vs other background 0.46 -> 0.42 / 0.51 -> 0.44, defect AUROC 0.754 -> 0.756 / 0.674 -> 0.680).")
    # --- Eq. 3: concept assignment
    assigner: Literal["text", "prototype", "hybrid"] = Field(
        "text", description="Eq. 3 assigner; 'prototype' and 'hybrid' are [ours] (spec §2)."
    )
    hybrid_k: int = Field(
        5, ge=1, description="[ours] hybrid: prototypes for concepts with >= k labeled exemplars."
    )
    novelty_threshold: float | None = Field(
        None, description="[ours] best similarity below this -> 'unknown' (None = off)."
    )
    assignment: Literal["hard", "soft", "confidence"] = Field(
        "hard", description="[ours] 'soft' = expected bonus sum_c softmax(cos/T)_c * S_c; 'confidence' = "
        "S_fine(p) * max_c softmax(cos/T)_c (the bonus gated by how sure Eq. 3 is)."
    )
    temperature: float = Field(
        0.01, gt=0, description="[ours] soft-assignment temperature T (0.01 = CLIP's logit scale 100); replaced "
        "by the fitted T of the round's assigner when `calibration` fits one."
    )
    # --- [ours] issue 16: the round's assigner refreshed and calibrated on the labeled crops (assignment.py)
    calibration: Literal["none", "temperature", "temperature_offset"] = Field(
        "none", description="[ours] fit on the labeled crops (leave-one-out for prototypes): 'temperature' = T "
        "of softmax(sim / T) by maximum likelihood of each crop's true concept; 'temperature_offset' = T and an "
        "offset of the text columns against the prototype columns (hybrid).")
    temperature_bounds: tuple[float, float] = Field(
        (0.002, 0.5), description="[ours] search interval of the fitted temperature.")
    calibration_min_crops: int = Field(
        10, ge=1, description="[ours] fewer labeled crops than this: no fit (the configured temperature).")
    exemplars: Literal["boxes", "boxes+proposals"] = Field(
        "boxes", description="[ours] labeled crops of the prototypes and the fit: the labeled boxes, or also the "
        "round detector's proposals on labeled slices (IoU >= exemplar_iou with a box: its concept; below it "
        "with every box: background).")
    exemplar_iou: float = Field(0.1, gt=0, le=1, description="[ours] IoU that makes a proposal a box's exemplar.")
    # --- [ours] issue 16: count-aware pooling and the detector-uncertainty hybrid (fusion.py)
    count_weight: float = Field(
        0.0, ge=0, description="[ours] Eq. 9 count term: P(x) + count_weight * log(1 + #proposals with score >= "
        "count_min_score) (0 = the paper's P(x)).")
    count_min_score: float = Field(0.5, ge=0, le=1, description="[ours] detector score a counted proposal needs.")
    nu: float = Field(
        0.0, ge=0, description="[ours] A(x) + nu * z(U(x)), U = the record's uncertainty[uncertainty_key] (0 = off).")
    uncertainty_key: str = Field("entropy", description="[ours] the detector uncertainty U of the nu term.")
    missing_concept: Literal["error", "background", "unknown"] = Field(
        "error",
        description="[ours] a record concept absent from the graph: 'error' (default), or map it to "
        "'background' (no bonus) or 'unknown' (never covered).",
    )
    # --- labels, normalization, selection
    label_mode: Literal["typed", "binary"] = Field(
        "typed",
        description="Spec §3: 'typed' counts labeled classes; 'binary' counts CLIP-assigned concepts "
        "of the labeled boxes.",
    )
    group_by: str | None = Field(None, description="[ours] Eq. 11 z-scores within each meta[group_by].")
    difficulty_within: Literal["pool", "concept"] = Field(
        "pool",
        description="[ours] population of z(E_rec(p)), z(V_den(p)) and z(D(p)): 'pool' = all proposals "
        "(spec §6); 'concept' = the proposals assigned the same fine concept (within group_by groups), so "
        "a concept whose regions are all harder to reconstruct does not crowd out the rest.",
    )
    batch_aware: bool = Field(
        False, description="[ours] greedy picks updating provisional counts n(v) after each pick."
    )
    rationale_margin: float = Field(
        0.1, ge=0,
        description="[ours] wording only: a rationale whose driving concept beats the runner-up's CLIP "
        "similarity by less than this says the concept is uncertain (measured: such claims are right far "
        "less often, docs/results.md).",
    )
    screening: ScreeningConfig = Field(default_factory=ScreeningConfig)
    seed: int = Field(0, ge=0, description="Seed of every random choice (random baseline, core-set start...).")

    @field_validator(
        "alpha", "beta", "gamma", "rho", "eta", "lambda_", "mu", "percentile", "t_frac",
        "context_margin", "temperature", "rationale_margin", "count_weight", "nu",
    )
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v

    @field_validator("temperature_bounds")
    @classmethod
    def _bounds(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 < v[0] < v[1] and math.isfinite(v[1])):
            raise ValueError(f"need 0 < low < high, got {list(v)}")
        return v

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one level is needed")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate level in {list(v)}")
        return tuple(lv for lv in LEVELS if lv in v)  # canonical order

    # ------------------------------------------------------------------ construction
    @classmethod
    def field_names(cls) -> list[str]:
        """Valid parameter names as written in files and ``--set`` (alias ``lambda``)."""
        names = [f.alias or n for n, f in cls.model_fields.items()]
        names += [f"screening.{n}" for n in ScreeningConfig.model_fields]
        return names

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config",
                  lines: dict[tuple[str, ...], int] | None = None) -> GSALConfig:
        """Validate a mapping; errors name ``where`` (file), the line if known, and the field."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping of parameter names, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(_format_validation(e, where, lines or {})) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> GSALConfig:
        """Load a YAML (or JSON) file; an optional top-level ``gsal:`` section is accepted. A name that is
        not a file but a shipped preset (``paper-exact``: ``configs/gsal_paper-exact.yaml``) loads that."""
        preset = CONFIGS_DIR / f"gsal_{path}.yaml"
        if not Path(path).exists() and "/" not in str(path) and preset.is_file():
            path = preset
        data, lines = read_yaml_with_lines(path, ConfigError)
        if isinstance(data, dict) and set(data) == {"gsal"}:
            data = data["gsal"]
            lines = {k[1:]: v for k, v in lines.items() if k[:1] == ("gsal",)}
        return cls.from_dict(data, where=str(path), lines=lines)

    def with_overrides(self, overrides: Iterable[str]) -> GSALConfig:
        """Apply ``name=value`` strings (value parsed as YAML: numbers, true/false, null, lists).

        ``lambda`` and ``lambda_`` both name the fusion weight; ``screening.enabled=true`` reaches
        into the screening section. An unknown name raises a `ConfigError` listing valid names.
        """
        data = self.model_dump(by_alias=True)
        valid = self.field_names()
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected name=value (valid names: {', '.join(valid)})")
            name, raw = item.split("=", 1)
            name = name.strip()
            if name == "lambda_":
                name = "lambda"
            if name not in valid:
                raise ConfigError(f"--set {item!r}: unknown parameter {name!r}; valid names: {', '.join(valid)}")
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError:
                value = raw
            except RecursionError:
                raise ConfigError(f"--set {name}=...: value nested too deeply") from None
            if "." in name:
                head, tail = name.split(".", 1)
                if not isinstance(data.get(head), dict):  # e.g. --set screening=0.5 --set screening.enabled=true
                    raise ConfigError(f"--set {name}: {head!r} was set to {data.get(head)!r}, not a section")
                data[head] = {**data[head], tail: value}
            else:
                data[name] = value
        return self.from_dict(data, where="--set")

    def replace(self, **updates: Any) -> GSALConfig:
        """A validated copy with python field names updated (``lambda_=0`` etc.)."""
        data = self.model_dump()
        data.update(updates)
        return self.from_dict(data, where="GSALConfig.replace")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with file names (``lambda``)."""
        d = self.model_dump(by_alias=True, mode="json")
        return d


def _format_validation(e: ValidationError, where: str, lines: dict[tuple[str, ...], int]) -> str:
    parts = []
    valid = ", ".join(GSALConfig.field_names())
    for err in e.errors():
        loc = tuple(str(x) for x in err["loc"])
        field = ".".join(loc) or "(root)"
        line = lines.get(loc) or (lines.get(loc[:1]) if loc else None)
        at = f"{where}:{line}" if line else where
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown parameter; valid names: {valid}"
        got = repr(err.get("input"))
        got = got if len(got) <= 200 else got[:197] + "..."  # a 10 MB value must not become a 10 MB message
        parts.append(f"{at}: field {field!r}: {msg} (got {got})")
    return "; ".join(parts)
