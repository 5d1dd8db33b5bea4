"""Wav2Lip generator (Prajwal et al., 2020), key-for-key with the published checkpoints.

Parameter names match `wav2lip.pth` / `wav2lip_gan.pth` (after stripping `module.`), e.g.
`face_encoder_blocks.1.0.conv_block.1.running_mean` or `output_block.1.weight`.
"""

from __future__ import annotations

import torch
from torch import nn

T = torch.Tensor


class ConvBlock(nn.Module):
    """Conv → BatchNorm → (+ input if residual) → ReLU; the published `Conv2d` block."""

    def __init__(self, cin: int, cout: int, k: int, s: int | tuple[int, int], p: int, residual: bool = False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, k, s, p), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class UpBlock(nn.Module):
    """ConvTranspose → BatchNorm → ReLU; the published `Conv2dTranspose` block."""

    def __init__(self, cin: int, cout: int, k: int, s: int, p: int, op: int = 0):
        super().__init__()
        self.conv_block = nn.Sequential(nn.ConvTranspose2d(cin, cout, k, s, p, op), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _stage(cin: int, cout: int, stride: int | tuple[int, int], n_res: int, k: int = 3, p: int = 1) -> list[nn.Module]:
    """A strided conv followed by `n_res` residual 3×3 convs at `cout` channels."""
    return [ConvBlock(cin, cout, k, stride, p)] + [ConvBlock(cout, cout, 3, 1, 1, residual=True) for _ in range(n_res)]


def _up_stage(cin: int, cout: int, n_res: int, k_s_p_op: tuple[int, int, int, int]) -> nn.Sequential:
    k, s, p, op = k_s_p_op
    return nn.Sequential(UpBlock(cin, cout, k, s, p, op), *[ConvBlock(cout, cout, 3, 1, 1, residual=True) for _ in range(n_res)])


class Wav2Lip(nn.Module):
    """Inputs: mel (B, 1, 80, 16), face (B, 6, 96, 96) in [0, 1]; output (B, 3, 96, 96) in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(6, 16, 7, 1, 3)),  # 96×96
                nn.Sequential(*_stage(16, 32, 2, 2)),  # 48×48
                nn.Sequential(*_stage(32, 64, 2, 3)),  # 24×24
                nn.Sequential(*_stage(64, 128, 2, 2)),  # 12×12
                nn.Sequential(*_stage(128, 256, 2, 2)),  # 6×6
                nn.Sequential(*_stage(256, 512, 2, 1)),  # 3×3
                nn.Sequential(ConvBlock(512, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0)),  # 1×1
            ]
        )
        self.audio_encoder = nn.Sequential(
            *_stage(1, 32, 1, 2),
            *_stage(32, 64, (3, 1), 2),
            *_stage(64, 128, 3, 2),
            *_stage(128, 256, (3, 2), 1),
            ConvBlock(256, 512, 3, 1, 0),
            ConvBlock(512, 512, 1, 1, 0),
        )
        up = (3, 2, 1, 1)  # kernel, stride, padding, output_padding: doubles H and W
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(512, 512, 1, 1, 0)),
                _up_stage(1024, 512, 1, (3, 1, 0, 0)),  # 3×3
                _up_stage(1024, 512, 2, up),  # 6×6
                _up_stage(768, 384, 2, up),  # 12×12
                _up_stage(512, 256, 2, up),  # 24×24
                _up_stage(320, 128, 2, up),  # 48×48
                _up_stage(160, 64, 2, up),  # 96×96
            ]
        )
        self.output_block = nn.Sequential(ConvBlock(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def encode_face(self, face: torch.Tensor) -> list[torch.Tensor]:
        """The seven skip features of the face encoder (96×96 … 1×1)."""
        feats = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            feats.append(x)
        return feats

    def decode(self, mel: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        """Audio encoder, then the decoder with the face features as skip connections."""
        feats = list(feats)
        x = self.audio_encoder(mel)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), feats.pop()), dim=1)
        return self.output_block(x)

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        return self.decode(mel, self.encode_face(face))


class FaceEncoder(nn.Module):
    """Export wrapper: face (1, 6, 96, 96) → its seven features. For a still avatar this runs once per request."""

    def __init__(self, net: Wav2Lip):
        super().__init__()
        self.net = net

    def forward(self, face: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.net.encode_face(face))


class Decoder(nn.Module):
    """Export wrapper: mel (B, 1, 80, 16) + the seven face features of batch 1, broadcast to B → mouths."""

    def __init__(self, net: Wav2Lip):
        super().__init__()
        self.net = net

    # explicit parameters: their names become the IR's input names
    def forward(self, mel: T, feat0: T, feat1: T, feat2: T, feat3: T, feat4: T, feat5: T, feat6: T) -> T:
        feats = (feat0, feat1, feat2, feat3, feat4, feat5, feat6)
        return self.net.decode(mel, [f.expand(mel.shape[0], -1, -1, -1) for f in feats])
