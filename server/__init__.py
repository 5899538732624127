"""The GSAL Edge station: a gRPC service that scores CT slices with a bundle and forwards them to the trainer.

Modules: ``config`` (ServerConfig, TrainerLink), ``station`` (the serving scorer, hot swap),
``batcher`` (dynamic batching), ``servicer`` (gsal.v1.Scorer), ``app`` (StationServer: health,
reflection, TLS, auth, metrics), ``forwarder`` (scored items pushed to the trainer), ``bundle_watcher``
(follow a bundles folder's LATEST), ``metrics`` (Prometheus), ``cli`` (``serve``, ``score``, ``info``,
``load-bundle``). Messages, TLS and the clients live in ``gsal_wire``; this package never imports
``trainer``. Importing ``server`` alone imports no gRPC; submodules do.
"""
