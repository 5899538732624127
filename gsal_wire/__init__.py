"""The wire between station and trainer: generated protobuf access (``pb``, ``proto_loader``),
record/slice <-> message conversion (``convert``), TLS and bearer tokens (``security``), client channels
(``channel``), the shared TLS command-line options (``cli_options``), the Scorer client (``scorer_client``)
and the trainer push client (``trainer_client``).

Both ``server/`` and ``trainer/`` import this package and never each other, so the two sides talk
only through ``proto/`` messages. It imports ``gsal_edge`` (one way), never the other way round.
"""

MiB = 1024 * 1024
