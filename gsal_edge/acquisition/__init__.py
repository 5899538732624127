"""The paper's math: the concept graph (spec §1), concept assignment (Eq. 3), rarity (Eq. 4), diffusion
difficulty (Eqs. 5-6), fusion (Eqs. 7-10, A(x)), selection with rationale (§7) and the baselines (§8),
as pure numpy functions over the spec §11 score records and `GSALConfig`.

Imports numpy, networkx, PyYAML, pydantic and the foundation modules (``gsal_edge.errors``, ``jsonio``,
``config_files``) only: no torch, no ``gsal_edge.models``, ``scoring``, ``benchmark`` or ``data``, and no
data IO beyond reading its own config, graph, counts and score-record files. Two lazy imports inside a
function are the exceptions: PIL for resizing crops (``diffusion_difficulty``) and torch with the
detector for the MC-dropout baseline (``uncertainty.mc_dropout_uncertainty``). Import from the modules;
this package re-exports nothing.
"""
