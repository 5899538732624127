"""GSALConfig: spec defaults, the `lambda` alias, YAML loading and `--set` overrides with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gsal_edge.acquisition.config import ConfigError, GSALConfig


def test_defaults_are_the_spec_values() -> None:
    c = GSALConfig()
    # spec §§3-7: alpha = beta = 0.5, gamma 0.5, rho 3, eta 0.5, lambda 0.5, mu 0.5, 80th percentile,
    # K = 4, t = 0.1 T ([ours]; the paper's 0.25 T is `--config paper-exact`), M = 8, margin 1.5x,
    # roi_reduce mean, screening and novelty off
    assert (c.alpha, c.beta, c.gamma, c.rho, c.eta, c.lambda_, c.mu) == (0.5, 0.5, 0.5, 3.0, 0.5, 0.5, 0.5)
    assert (c.percentile, c.K, c.t_frac, c.M, c.context_margin) == (80.0, 4, 0.1, 8, 1.5)
    assert c.roi_reduce == "mean" and c.proposal_mode in ("crop", "latent_roi")
    assert c.novelty_threshold is None and c.screening.enabled is False and c.batch_aware is False
    assert c.assignment == "hard" and c.thresholds == "hard" and c.label_mode in ("typed", "binary")
    assert c.levels == ("fine", "coarse", "abstract") and c.rarity is True and c.group_by is None


def test_lambda_alias_in_and_out() -> None:
    c = GSALConfig.model_validate({"lambda": 0.2})
    assert c.lambda_ == 0.2
    assert c.to_dict()["lambda"] == 0.2 and "lambda_" not in c.to_dict()
    assert GSALConfig(lambda_=0.3).lambda_ == 0.3  # python name works too


def test_with_overrides_parses_values() -> None:
    c = GSALConfig().with_overrides(
        ["gamma=0.25", "lambda=0", "levels=[coarse, fine]", "screening.enabled=true", "group_by=product",
         "novelty_threshold=0.2", "batch_aware=true", "K=2"]
    )
    assert c.gamma == 0.25 and c.lambda_ == 0.0 and c.K == 2
    assert c.levels == ("fine", "coarse")  # canonical order
    assert c.screening.enabled is True and c.group_by == "product"
    assert c.novelty_threshold == 0.2 and c.batch_aware is True
    assert GSALConfig().with_overrides(["lambda_=1"]).lambda_ == 1.0
    assert c.with_overrides(["group_by=null"]).group_by is None


def test_unknown_override_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as e:
        GSALConfig().with_overrides(["gama=1"])
    msg = str(e.value)
    assert "'gama'" in msg and "gamma" in msg and "lambda" in msg and "screening.enabled" in msg


def test_bad_override_value_names_field() -> None:
    with pytest.raises(ConfigError, match="rho"):
        GSALConfig().with_overrides(["rho=-1"])
    with pytest.raises(ConfigError, match="assignment"):
        GSALConfig().with_overrides(["assignment=fuzzy"])
    with pytest.raises(ConfigError, match="name=value"):
        GSALConfig().with_overrides(["gamma"])


def test_from_yaml_and_errors_name_file_and_line(tmp_path: Path) -> None:
    ok = tmp_path / "ok.yaml"
    ok.write_text("gsal:\n  gamma: 0.1\n  lambda: 2\n  screening: {enabled: true, keep_factor: 2}\n")
    c = GSALConfig.from_yaml(ok)
    assert c.gamma == 0.1 and c.lambda_ == 2.0 and c.screening.keep_factor == 2.0

    bad = tmp_path / "bad.yaml"
    bad.write_text("alpha: 0.5\n# comment\neta: 2\n")
    with pytest.raises(ConfigError) as e:
        GSALConfig.from_yaml(bad)
    assert f"{bad}:3" in str(e.value) and "'eta'" in str(e.value)

    unk = tmp_path / "unk.yaml"
    unk.write_text("alpha: 0.5\nbogus: 1\n")
    with pytest.raises(ConfigError) as e:
        GSALConfig.from_yaml(unk)
    assert f"{unk}:2" in str(e.value) and "unknown parameter" in str(e.value) and "gamma" in str(e.value)

    dup = tmp_path / "dup.yaml"
    dup.write_text("alpha: 0.5\nbeta: 1\nalpha: 0.7\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:3: duplicate key 'alpha' \(first at line 1\)"):
        GSALConfig.from_yaml(dup)


def test_json_config_and_frozen(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text('{"mu": 0.25,\n "percentile": 50}')
    c = GSALConfig.from_yaml(p)
    assert c.mu == 0.25 and c.percentile == 50.0
    with pytest.raises(ValidationError):
        c.mu = 1.0  # type: ignore[misc]
    assert c.replace(mu=1.0).mu == 1.0 and c.mu == 0.25


def test_paper_exact_preset_is_one_flag_away() -> None:
    """The product default departs from the paper only where docs/results.md says; `paper-exact` undoes it."""
    assert GSALConfig().noise == "common"
    paper = GSALConfig.from_yaml("paper-exact")
    assert paper.noise == "per_image"
    departures = {k for k, v in paper.to_dict().items() if GSALConfig().to_dict().get(k) != v}
    assert departures == {"noise", "t_frac", "K_image", "crop_border"} and paper.t_frac == 0.25 and paper.K_image is None


def test_issue_16_switches_default_off_and_validate() -> None:
    cfg = GSALConfig()
    assert (cfg.calibration, cfg.exemplars, cfg.count_weight, cfg.nu, cfg.assignment, cfg.thresholds) == \
        ("none", "boxes", 0.0, 0.0, "hard", "hard")
    cfg2 = cfg.with_overrides(["calibration=temperature_offset", "temperature_bounds=[0.01, 0.2]",
                               "assignment=confidence", "thresholds=relative", "nu=0.5", "count_weight=0.25"])
    assert cfg2.temperature_bounds == (0.01, 0.2) and cfg2.assignment == "confidence"
    for bad in ("temperature_bounds=[0.2, 0.1]", "temperature_bounds=[0, 0.1]", "calibration=isotonic",
                "nu=-1", "exemplar_iou=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            cfg.with_overrides([bad])


def test_exemplars_preset_is_the_issue_16_symbolic_package() -> None:
    """`--config exemplars` turns on exactly the measured package and nothing else."""
    cfg = GSALConfig.from_yaml("exemplars")
    changed = {k for k, v in cfg.to_dict().items() if GSALConfig().to_dict().get(k) != v}
    assert changed == {"assigner", "exemplars", "calibration", "assignment", "thresholds"}
    assert (cfg.assigner, cfg.exemplars, cfg.calibration, cfg.assignment, cfg.thresholds) == \
        ("hybrid", "boxes+proposals", "temperature", "confidence", "relative")
