"""Schemathesis hooks for tests/e2e/test_schemathesis.py (loaded by the CLI through SCHEMATHESIS_HOOKS).

Fuzzed media fields carry fuzzed bytes, which fail to decode (quickly). Half of the generated cases
whose body has media fields get real media instead: the 192² test face, a 10-frame clip of it, 0.2 s
of speech (5 frames at 25 fps: one or two generator batches). The options around them stay fuzzed, so they go through real renders too, at a
bounded cost; the schema is used as served, neither narrowed nor widened.
"""

from __future__ import annotations

import base64
from functools import cache

import schemathesis
from helpers import idle_clip, small_face, speech_s, wav
from hypothesis import strategies as st

SPEECH_S = 0.2


@cache
def real_media() -> dict[str, bytes]:
    """Body field → bytes that decode."""
    face, clip, speech = small_face(), idle_clip(160, 120, frames=10)[0], wav(speech_s(SPEECH_S))
    return {"image": face, "avatar": face, "source_image": face, "video": clip, "audio": speech, "audio_data": speech}


def with_real_media(case: schemathesis.Case) -> schemathesis.Case:
    """The case with each media field it carries replaced: file parts in a form, base64 in JSON."""
    form = case.media_type == "multipart/form-data"
    media = {k: v if form else base64.b64encode(v).decode() for k, v in real_media().items() if k in case.body}
    case.body = {**case.body, **media}
    return case


@schemathesis.hook
def flatmap_case(context: schemathesis.HookContext, case: schemathesis.Case) -> st.SearchStrategy:
    if not isinstance(case.body, dict) or not real_media().keys() & case.body.keys():
        return st.just(case)
    return st.booleans().map(lambda real: with_real_media(case) if real else case)
