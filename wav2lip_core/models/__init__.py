"""PyTorch definitions of the published networks, used by the converter (and the bench) only.

Runtime code never imports this package: it needs torch.
"""

from __future__ import annotations

import torch
from torch import nn


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Seeded, untrained weights *and* BatchNorm statistics, so parity checks exercise every term."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=gen))
            elif tensor.dim() > 1:  # conv kernels, variance gain / fan_in
                # gain 1 keeps ~40 layers unsaturated; the audio encoder gets He's gain 2 so that the
                # mouth visibly depends on the mel (≈ 8 grey levels of std across mels), as a trained one does
                gain = 2.0 if name.startswith("audio_encoder.") else 1.0
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * (gain / tensor[0].numel()) ** 0.5)
            else:  # BatchNorm / L2Norm scales
                tensor.copy_(1.0 + 0.1 * torch.randn(tensor.shape, generator=gen))
    return model.eval()
