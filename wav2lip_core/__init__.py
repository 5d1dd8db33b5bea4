"""Wav2Lip lip-sync on OpenVINO: audio + avatar image or clip → lip-synced H.264/AAC MP4, on CPU.

`TalkingHead` is the public API (see README, "Python API"); `Options` and `Result` its request and
answer; every refusal is a `LipSyncError` with a stable `code`. This package is the library: it imports neither
the HTTP server (lipsync_server) nor the stores (lipsync_stores), nor Flask or Redis.
"""

from .api import TalkingHead
from .avatar import Avatar
from .config import Settings
from .errors import LipSyncError
from .schema import Options, Result

__version__ = "1.0.0"
__all__ = ["Avatar", "LipSyncError", "Options", "Result", "Settings", "TalkingHead", "__version__"]
