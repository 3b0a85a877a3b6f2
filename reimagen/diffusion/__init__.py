"""Diffusion maths, backend-neutral (paper §3.1, Eq. 1-6): the cosine noise schedule, time
features, samplers (``ddpm``, ``ddim``, ``dpmpp2m``), x̂0 thresholding, SR noise augmentation,
classifier-free guidance strategies and the per-stage sampling settings.

Written with array operators only, so the same code runs on numpy, torch and jax arrays.
"""
