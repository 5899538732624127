"""The GSAL Edge station: a gRPC service that scores CT slices with a bundle and forwards them to the trainer.

Modules: ``config`` (ServerConfig, TrainerLink), ``station`` (the serving scorer, hot swap),
``batcher`` (dynamic batching), ``servicer`` (gsal.v1.Scorer), ``app`` (StationServer: health,
reflection, TLS, auth, metrics), ``forwarder`` (scored items pushed to the trainer), ``forward_spool``
(its on-disk queue, replayed at start), ``deferred`` / ``drain`` (slices deferred past the queue limit),
``limits`` / ``internal_errors`` (call limits, the INTERNAL catch-all), ``bundle_watcher`` (follow a bundles
folder's LATEST), ``metrics`` (Prometheus), ``malloc_arenas`` (glibc arena cap at start),
``process_launch`` (start ``serve`` as a child process: tests, load test), ``cli`` (``serve``, ``score``,
``info``, ``load-bundle``, ``drain-deferred``). Messages, TLS and the clients live in ``gsal_wire``; this package never imports
``trainer``. Importing ``server`` alone imports no gRPC; submodules do.
"""
