"""Every knob of the station server in one validated object (the CLI flags map onto it 1:1)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from gsal_edge.config_files import FrozenModel
from gsal_edge.data.slices import SliceLimits
from gsal_wire import STATION_ID_RE, MiB
from gsal_wire.security import TLSConfig

__all__ = ["MiB", "ServerConfig", "TLSConfig", "TrainerLink"]


class TrainerLink(FrozenModel):
    """Where and how the station forwards its score records + slices (see :mod:`server.forwarder`)."""

    address: str = Field(..., min_length=1, description="trainer host:port")
    station_id: str = Field(..., description="this station's id at the trainer (must equal ServerConfig.station_id)")
    insecure: bool = Field(False, description="plaintext channel; must be explicit")
    ca: Path | None = Field(None, description="CA that signed the trainer's certificate (PEM); None: system roots")
    client_cert: Path | None = Field(None, description="client certificate for mutual TLS (PEM)")
    client_key: Path | None = Field(None, description="client key for mutual TLS (PEM)")
    server_name: str | None = Field(None, description="TLS name to verify when it differs from the address")
    chunk_size: int = Field(64, ge=1, description="records per Ingest call")
    max_delay_ms: float = Field(1000.0, ge=0, description="longest a record waits for its chunk to fill")
    queue_size: int = Field(10_000, ge=1, description="records held while unsent (memory + spool); beyond: dropped")
    queue_bytes: int = Field(512 * MiB, ge=MiB, description="slice bytes held while unsent (memory + spool); beyond: "
                             "dropped")
    spool: bool | None = Field(
        None, description="keep unsent records on disk until the trainer acknowledged them, replayed at start "
        "(server/forward_spool.py); None: on when the station has a data_dir (or spool_dir is set)"
    )
    spool_dir: Path | None = Field(None, description="where the spool lives (None: DATA_DIR/forward-spool)")
    spool_sync: Literal["normal", "full"] = Field(
        "normal", description="normal: survives a process crash/SIGKILL; full: also a power loss (fsync per commit)"
    )
    retry_base_s: float = Field(0.2, gt=0, description="first backoff delay after a failed push")
    retry_max_s: float = Field(10.0, gt=0, description="longest backoff delay (also the reconnect backoff cap)")
    call_timeout_s: float = Field(60.0, gt=0, description="deadline of one Ingest call")
    flush_s: float | None = Field(None, ge=0, description="shutdown: time to push what is queued (None: grace_s)")
    advertise_address: str | None = Field(
        None, description="host:port the trainer dials to reach this station (told in Ingest; None: the bound address)"
    )

    @model_validator(mode="after")
    def _check(self) -> TrainerLink:
        if not STATION_ID_RE.match(self.station_id):
            raise ValueError(f"trainer.station_id {self.station_id!r} must match {STATION_ID_RE.pattern}")
        if self.insecure and (self.ca or self.client_cert or self.client_key):
            raise ValueError("trainer: insecure=True together with ca/client_cert/client_key makes no sense")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("trainer: client_cert and client_key go together")
        if self.retry_base_s > self.retry_max_s:
            raise ValueError("trainer: retry_base_s must not exceed retry_max_s")
        if self.spool is False and self.spool_dir is not None:
            raise ValueError("trainer: spool=False together with spool_dir makes no sense")
        return self


class ServerConfig(FrozenModel):
    """Station scorer configuration. Defaults suit one CPU station; see ``docs`` in each field.

    Validation errors never echo the input (``hide_input_in_errors``): the input holds the tokens.
    """

    model_config = ConfigDict(hide_input_in_errors=True)

    host: str = Field("127.0.0.1", description="address to bind; 127.0.0.1 unless you mean to expose it")
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port")
    station_id: str | None = Field(None, description="written to record.model['station'] when set")

    # batching (Triton-style dynamic batcher)
    max_batch_size: int = Field(8, ge=1, description="most slices scored in one scorer call")
    max_queue_delay_ms: float = Field(5.0, ge=0, description="longest an item waits for a batch to fill")
    queue_size: int = Field(256, ge=1, description="items waiting to be scored; beyond: RESOURCE_EXHAUSTED")
    max_inflight_per_stream: int = Field(32, ge=1, description="items one Score stream may have queued")
    stream_dedupe_window: int = Field(
        100_000, ge=1, description="ids remembered per Score stream for the duplicate check (most recent)"
    )
    default_timeout_ms: float | None = Field(
        None, gt=0, description="per-item budget when neither the call nor the item sets one"
    )

    # overflow: what a slice gets when the scoring queue is full
    overflow: Literal["reject", "defer"] = Field(
        "reject", description="reject: RESOURCE_EXHAUSTED; defer: store the slice in data_dir/deferred, answer "
        "`deferred`, score it later (gsal-edge station drain-deferred)"
    )
    data_dir: Path | None = Field(
        None, description="the station's data folder (deferred queue, forwarder spool); needed for defer"
    )
    deferred_max_items: int = Field(100_000, ge=1, description="deferred slices kept on disk; beyond: refused")
    deferred_max_bytes: int = Field(8 * 1024 * MiB, ge=MiB, description="deferred bytes on disk; beyond: refused")

    # transport and connection limits (see server/limits.py)
    max_message_bytes: int = Field(65 * MiB, ge=1024, description="gRPC max receive/send message size")
    max_scoring_rpcs: int = Field(
        32, ge=1, description="Score streams + ScoreOne calls in flight, all peers; beyond: RESOURCE_EXHAUSTED"
    )
    max_streams_per_peer: int = Field(
        16, ge=1, description="streams (Score, reflection, health Watch) one client address may hold open"
    )
    max_aux_streams: int = Field(8, ge=1, description="open non-scoring streams (reflection, health Watch), all peers")
    reserved_workers: int = Field(
        4, ge=1, description="handler threads kept free of streams for health checks, GetModelInfo, LoadBundle"
    )
    stream_idle_timeout_s: float = Field(
        30.0, gt=0, description="a Score stream with nothing sent and nothing outstanding for this long is ended"
    )
    max_workers: int | None = Field(
        None, ge=2, description="gRPC handler threads (default max_scoring_rpcs + max_aux_streams + reserved_workers)"
    )
    max_concurrent_rpcs: int | None = Field(
        None, ge=1, description="grpc's own cap on RPCs in flight, a safety net (default 4 x handler threads)"
    )
    grace_s: float = Field(10.0, ge=0, description="graceful shutdown: time for in-flight work to drain")

    # slice validation
    max_side: int = Field(8192, ge=1)
    max_pixels: int = Field(4096 * 4096, ge=1)
    max_slice_bytes: int = Field(64 * MiB, ge=1)
    min_side: int = Field(8, ge=1, description="shortest accepted side (pixels)")
    max_aspect: float = Field(64.0, ge=1, description="longest accepted side / shortest side")

    # security
    tls: TLSConfig | None = None
    insecure: bool = Field(False, description="allow a plaintext port; must be explicit, logs a warning")
    admin_token: str | None = Field(None, repr=False, description="bearer token for LoadBundle; unset: disabled")
    score_token: str | None = Field(None, repr=False, description="bearer token for scoring RPCs; unset: open")

    # observability
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus on 127.0.0.1; 0: free port")
    metrics_host: str = "127.0.0.1"

    # forwarding of scored items to the trainer (None: off)
    trainer: TrainerLink | None = None

    @model_validator(mode="after")
    def _check(self) -> ServerConfig:
        if self.tls is None and not self.insecure:
            raise ValueError("no TLS configured: give tls (cert + key) or set insecure=True explicitly")
        if self.tls is not None and self.insecure:
            raise ValueError("insecure=True together with tls makes no sense; choose one")
        if self.max_slice_bytes + MiB > self.max_message_bytes:
            raise ValueError(
                f"max_message_bytes ({self.max_message_bytes}) must exceed max_slice_bytes ({self.max_slice_bytes})"
                " by at least 1 MiB for the rest of the message"
            )
        for name in ("admin_token", "score_token"):
            tok = getattr(self, name)
            if tok is not None and not (len(tok) >= 16 and tok.isascii() and tok.isprintable() and " " not in tok):
                raise ValueError(f"{name} must be at least 16 printable ASCII characters without spaces")
        if self.max_workers is not None and self.max_workers < self.handler_threads_needed:
            raise ValueError(
                f"max_workers ({self.max_workers}) must be at least max_scoring_rpcs + max_aux_streams + "
                f"reserved_workers ({self.handler_threads_needed}), or health checks can starve"
            )
        if self.overflow == "defer" and self.data_dir is None:
            raise ValueError("overflow='defer' needs data_dir (the deferred slices are kept there on disk)")
        if self.trainer is not None and self.trainer.spool and self.forward_spool_dir is None:
            raise ValueError("trainer.spool=True needs trainer.spool_dir or data_dir (the spool is kept on disk)")
        if self.trainer is not None and self.station_id != self.trainer.station_id:
            raise ValueError(
                f"trainer.station_id {self.trainer.station_id!r} must equal station_id {self.station_id!r}"
                " (records carry model['station'] and the trainer checks it)"
            )
        return self

    @property
    def forward_spool_dir(self) -> Path | None:
        """The forwarder's spool folder, or None when its queue is kept in memory only."""
        t = self.trainer
        if t is None or t.spool is False:
            return None
        if t.spool_dir is not None:
            return t.spool_dir
        return None if self.data_dir is None else self.data_dir / "forward-spool"

    @property
    def handler_threads_needed(self) -> int:
        """Threads that keep a free one for health checks however many streams are open."""
        return self.max_scoring_rpcs + self.max_aux_streams + self.reserved_workers

    @property
    def handler_threads(self) -> int:
        """gRPC handler threads of the server."""
        return self.max_workers or self.handler_threads_needed

    @property
    def slice_limits(self) -> SliceLimits:
        """The slice validation limits as the library type."""
        return SliceLimits(max_side=self.max_side, max_pixels=self.max_pixels, max_bytes=self.max_slice_bytes,
                           min_side=self.min_side, max_aspect=self.max_aspect)
