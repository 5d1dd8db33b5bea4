"""Wav2Lip lip-sync on OpenVINO: audio + avatar image → lip-synced H.264/AAC MP4, on CPU."""

__version__ = "1.0.0"
