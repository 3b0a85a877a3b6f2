"""reimagen as a peer_bench.py entry: `python peer_bench.py --plugin peer_reimagen.py`.

Same workload as the peers: the `small` preset (8.6M params, 32x32), K=0 (no neighbours: the
peers do not retrieve), text tokens [B, 16, 384] + mask, eps-prediction on a cosine schedule.
The reimagen package must be importable in the peer venv (run_peers.py puts the checkout on
PYTHONPATH; it needs attrs, pluggy, safetensors beside torch and numpy).

``entry(package)`` builds the entry from any importable copy of the package, e.g. the
``reimagen_<rev>`` copy of an earlier commit that run_peers.py --baseline makes, so the code
before and after a change run in the same process, interleaved.
"""

import importlib
import math

import peer_bench as pb
import torch


def entry(package: str = "reimagen", label: str = "") -> pb.Peer:
    root = importlib.import_module(package)
    unet = importlib.import_module(f"{package}.backends.torch.unet")
    cfg = importlib.import_module(f"{package}.core.unet_config").PRESETS["small"]

    def text(emb, mask):
        m = mask.bool()
        pooled = (emb * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        return unet.TextInputs(emb, m, pooled)

    def alpha_sigma(t):  # cosine schedule, continuous t in [0, 1]
        a = torch.cos((t + 0.008) / 1.008 * math.pi / 2).clamp(1e-4, 1.0)
        return a, (1 - a**2).clamp(min=0).sqrt()

    def forward(model, x_nchw, t, emb, mask):
        b = x_nchw.shape[0]
        ones = torch.ones(b, dtype=torch.bool)
        eps = model(
            x_nchw.permute(0, 2, 3, 1), t, text(emb, mask), use_text=ones, use_neighbors=~ones
        )
        return eps.permute(0, 3, 1, 2)

    def train_step(model, images, emb, mask):
        x0 = images * 2 - 1
        t = torch.rand(x0.shape[0])
        noise = torch.randn_like(x0)
        a, s = alpha_sigma(t)
        xt = a[:, None, None, None] * x0 + s[:, None, None, None] * noise
        return torch.nn.functional.mse_loss(forward(model, xt, t, emb, mask).float(), noise)

    def sample_step(model, x, t, emb, mask):
        return forward(model, x, t, emb, mask)

    return pb.Peer(
        make_model=lambda: unet.build_unet(cfg, seed=0),
        train_step=train_step,
        sample_step=sample_step,
        samplers={},
        version=label or getattr(root, "__version__", "main"),
        config={"preset": "small", "neighbors": 0, "package": package},
        notes="ReImagenUNet 'small' preset, K=0, NHWC in/out (permuted here).",
    )


pb.register("reimagen")(entry)
