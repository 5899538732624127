"""The wire between station and trainer: generated protobuf access, record/slice <-> message
conversion, TLS/token helpers and the Scorer client.

Both ``server/`` and ``trainer/`` import this package and never each other, so the two sides talk
only through ``proto/`` messages. It imports ``gsal_edge`` (one way), never the other way round.
"""

MiB = 1024 * 1024
