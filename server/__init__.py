"""GSAL Edge station scorer: a gRPC service that scores CT slices with a bundle (issue 8).

Modules: ``config`` (ServerConfig), ``station`` (scorer slot, hot swap), ``batcher`` (dynamic
batching), ``servicer`` (gsal.v1.Scorer), ``app`` (StationServer: health, reflection, TLS, auth,
metrics), ``client`` (ScorerClient), ``convert`` (messages <-> gsal_edge records), ``security``,
``metrics``, ``cli`` (typer commands ``serve``, ``score``, ``info``, ``load-bundle``),
``proto_loader`` (builds the generated ``gsal_proto`` package on demand).
Importing ``server`` alone imports no gRPC; submodules do.
"""
