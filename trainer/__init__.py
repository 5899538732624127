"""The GSAL Edge trainer node: durable pool store, selection rounds, annotation round trip, retrain/deploy.

Imports only ``gsal_edge`` (and the generated ``gsal_proto`` in the gRPC modules); see docs/DESIGN.md.
"""
