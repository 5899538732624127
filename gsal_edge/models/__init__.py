"""The three models GSAL runs on: the Faster R-CNN detector, the latent diffusion prior (VAE + UNet) and
CLIP — building them, loading real weights from local paths, training the embedded defaults, and the
detector's metrics and MC-dropout passes.

Torch lives here. May import :mod:`gsal_edge.acquisition` and :mod:`gsal_edge.data`; must not import
:mod:`gsal_edge.scoring` or :mod:`gsal_edge.benchmark` (the scorer runs exported engines, not these modules).
"""
