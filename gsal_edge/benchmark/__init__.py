"""Active-learning benchmark: the paper's protocol (spec §§8-9) on any detection data set.

For every seed and every strategy (spec §8 names, optionally with GSAL config overrides written
``gsal[proposal_mode=latent_roi,assigner=hybrid]``), starting from the seed's initial labeled set
(shared by all strategies of that seed), each round:

1. train the detector from scratch on the labeled set (``detector_training.train_detector``);
2. evaluate it on the fixed held-out test split (F1@0.5, mAP@50, COCO AP, per class);
3. score the unlabeled pool through the station's own :class:`gsal_edge.scoring.scorer.GSALScorer` (the
   detector engine is swapped each round; the diffusion prior and CLIP are fixed, so image-level
   E_rec / V_den and their per-position maps are cached per (image, prior, diffusion settings) and
   only what depends on the detector is recomputed);
4. select a batch with the strategy and reveal its ground truth (simulated annotator).

Label modes (spec §3): ``typed`` trains a typed detector and counts labeled classes; ``binary``
trains a class-agnostic detector and counts the CLIP-assigned concepts of the labeled boxes. The
mode is part of each strategy's GSAL config (``--set label_mode=binary`` or ``gsal[label_mode=binary]``).

Run folder (``RUN_DIR``):

- ``run.json``: config, seeds, expanded strategies, schedule, split sizes, rare classes, package
  versions, git commit;  ``split.json``: test ids, pool ids, each seed's initial labeled set;
- ``results/<strategy>/seed-<s>.json``: one record per finished round (metrics, rare-class retrieval,
  labeled instances per class, wall times, picks), rewritten atomically after each round: a killed run
  continues from its last finished round;
- ``picks/<strategy>/seed-<s>/round-<r>.json``: the selection with full rationale;
- ``shared/seed-<s>/...``: the round-0 detector, metrics and score records, computed once per seed
  and label mode and reused by every strategy; ``cache/``: the diffusion-score cache.

Modules: ``config`` (BenchConfig, presets, strategy specs, sweeps), ``split`` (test split, initial sets,
budget schedule, candidates, rare classes), ``inputs`` (data, class map, the fixed prior and CLIP),
``fingerprints`` (content keys), ``state`` (run folder files, round state, resume rules),
``diffusion_cache``, ``training`` (each round's detector), ``scoring`` (what a round computes for a
strategy), ``rounds`` (the round loop), ``run`` (``run_benchmark``), ``run_data`` (a run folder read back),
``report`` (``report.md``: tables, rationale checks) and ``plots`` (its figures and gallery).
"""
