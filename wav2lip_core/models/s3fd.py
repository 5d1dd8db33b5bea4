"""S3FD face detector (Zhang et al., 2017) as shipped with Wav2Lip's `face_detection`.

Parameter names match `s3fd.pth` (a plain state_dict): `conv1_1.weight`, …, `conv3_3_norm.weight`,
`fc6`, `fc7`, `conv6_*`, `conv7_*` and the six `*_mbox_conf` / `*_mbox_loc` heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (name, cin, cout) of the VGG trunk; a 2×2 max-pool follows conv1_2, conv2_2, conv3_3, conv4_3, conv5_3.
_TRUNK = [
    ("conv1_1", 3, 64), ("conv1_2", 64, 64),
    ("conv2_1", 64, 128), ("conv2_2", 128, 128),
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512),
]  # fmt: skip
_POOL_AFTER = {"conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"}
# (source feature, channels, conf channels): conv3_3 has 4 conf maps, max-out over the first 3.
HEADS = [("conv3_3_norm", 256, 4), ("conv4_3_norm", 512, 2), ("conv5_3_norm", 512, 2),
         ("fc7", 1024, 2), ("conv6_2", 512, 2), ("conv7_2", 256, 2)]  # fmt: skip


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10) * self.weight.view(1, -1, 1, 1)


class S3FD(nn.Module):
    """Input: (B, 3, H, W) pixels minus the (104, 117, 123) mean. Output: softmaxed conf and loc per head."""

    def __init__(self) -> None:
        super().__init__()
        for name, cin, cout in _TRUNK:
            setattr(self, name, nn.Conv2d(cin, cout, 3, 1, 1))
        self.fc6 = nn.Conv2d(512, 1024, 3, 1, 3)
        self.fc7 = nn.Conv2d(1024, 1024, 1, 1, 0)
        self.conv6_1 = nn.Conv2d(1024, 256, 1, 1, 0)
        self.conv6_2 = nn.Conv2d(256, 512, 3, 2, 1)
        self.conv7_1 = nn.Conv2d(512, 128, 1, 1, 0)
        self.conv7_2 = nn.Conv2d(128, 256, 3, 2, 1)
        self.conv3_3_norm = L2Norm(256, 10)
        self.conv4_3_norm = L2Norm(512, 8)
        self.conv5_3_norm = L2Norm(512, 5)
        for src, ch, n_conf in HEADS:
            setattr(self, f"{src}_mbox_conf", nn.Conv2d(ch, n_conf, 3, 1, 1))
            setattr(self, f"{src}_mbox_loc", nn.Conv2d(ch, 4, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        feats: dict[str, torch.Tensor] = {}
        h = image
        for name, _, _ in _TRUNK:
            h = F.relu(getattr(self, name)(h))
            if name in ("conv3_3", "conv4_3", "conv5_3"):
                feats[f"{name}_norm"] = getattr(self, f"{name}_norm")(h)
            if name in _POOL_AFTER:
                h = F.max_pool2d(h, 2, 2)
        h = F.relu(self.fc7(F.relu(self.fc6(h))))
        feats["fc7"] = h
        h = F.relu(self.conv6_2(F.relu(self.conv6_1(h))))
        feats["conv6_2"] = h
        feats["conv7_2"] = F.relu(self.conv7_2(F.relu(self.conv7_1(h))))
        outs: list[torch.Tensor] = []
        for src, _, n_conf in HEADS:
            conf = getattr(self, f"{src}_mbox_conf")(feats[src])
            if n_conf == 4:  # max-out background label over the first three maps
                bg = torch.max(torch.max(conf[:, 0:1], conf[:, 1:2]), conf[:, 2:3])
                conf = torch.cat([bg, conf[:, 3:4]], dim=1)
            outs += [F.softmax(conf, dim=1), getattr(self, f"{src}_mbox_loc")(feats[src])]
        return outs
