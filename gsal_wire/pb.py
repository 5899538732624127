"""The generated protobuf/gRPC modules, built on demand (see :mod:`gsal_wire.proto_loader`)."""

from __future__ import annotations

from gsal_wire.proto_loader import ensure_generated

ensure_generated()

from gsal_proto import common_pb2, scorer_pb2, scorer_pb2_grpc, trainer_pb2, trainer_pb2_grpc

SCORER_SERVICE = scorer_pb2.DESCRIPTOR.services_by_name["Scorer"].full_name  # "gsal.v1.Scorer"
TRAINER_SERVICE = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name

__all__ = [
    "SCORER_SERVICE",
    "TRAINER_SERVICE",
    "common_pb2",
    "scorer_pb2",
    "scorer_pb2_grpc",
    "trainer_pb2",
    "trainer_pb2_grpc",
]
