"""GSAL Edge library: the science of generative + symbolic active learning for CT inspection.

This package never imports gRPC nor the ``server``, ``trainer`` or ``export`` packages.
"""

__version__ = "0.1.0"
