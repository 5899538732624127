"""The wire between station and trainer: generated protobuf access (``pb``, ``proto_loader``),
record/slice <-> message conversion (``convert``), TLS and bearer tokens (``security``), client channels
(``channel``), the shared TLS command-line options (``cli_options``), the Scorer client (``scorer_client``)
and the trainer push client (``trainer_client``).

Both ``server/`` and ``trainer/`` import this package and never each other, so the two sides talk
only through ``proto/`` messages. It imports ``gsal_edge`` (one way), never the other way round.
"""

import re

MiB = 1024 * 1024
#: a station id as the station sends it and the trainer files records under
STATION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
