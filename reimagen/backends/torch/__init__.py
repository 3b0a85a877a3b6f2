"""PyTorch backend (DESIGN §4, §9): the Re-Imagen U-Net, its denoiser, trainer and checkpoints.

``BACKEND`` (the registered "torch" backend object) is added with the denoiser and trainer.
"""
