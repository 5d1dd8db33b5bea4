"""The one request schema: JSON, form fields and CLI arguments give the same Options and the same typed errors."""

from __future__ import annotations

import argparse
import shlex

import numpy as np
import pytest

from wav2lip_core.avatar import Avatar
from wav2lip_core.errors import BadRequest
from wav2lip_core.schema import Options, add_cli_arguments, option_names

DEFAULTS = Options()


def cli(*argv: str) -> Options:
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    return Options.from_cli(parser.parse_args(list(argv)))


def test_defaults_are_declared_once_and_every_route_gives_them() -> None:
    assert (DEFAULTS.fps, DEFAULTS.pads, DEFAULTS.box, DEFAULTS.paste) == (None, (0, 10, 0, 0), None, "box")
    assert (DEFAULTS.loop, DEFAULTS.start_frame) == ("pingpong", 0)
    assert Options.from_json({}) == Options.from_form({}) == cli() == DEFAULTS
    assert Options.from_json({k: None for k in option_names()}) == DEFAULTS  # null means "not given"


def test_the_three_constructors_agree() -> None:
    want = Options(fps=30.0, pads=(1, 2, 3, 4), box=(5, 6, 70, 80), paste="feather", loop="repeat", start_frame=7)
    body = {"fps": 30, "pads": [1, 2, 3, 4], "box": [5, 6, 70, 80.0], "paste": "feather", "loop": "repeat", "start_frame": 7}
    assert Options.from_json(body) == want
    form = {"fps": "30", "pads": "[1, 2, 3, 4]", "box": "5,6,70,80", "paste": "feather", "loop": "repeat", "start_frame": "7"}
    assert Options.from_form(form) == want
    assert cli(*shlex.split("--fps 30 --pads 1 2 3 4 --box 5 6 70 80 --paste feather --loop repeat --start-frame 7")) == want


@pytest.mark.parametrize(
    ("field", "json_value", "form_value", "code"),
    [
        ("fps", 0, "0", "invalid_fps"),
        ("fps", 61, "61", "invalid_fps"),
        ("fps", "25", "twenty", "invalid_fps"),
        ("fps", True, "true", "invalid_fps"),
        ("pads", [0, 10**6, 0, 0], "0,1000000,0,0", "invalid_pads"),
        ("pads", [0, 1, 2], "0,1,2", "invalid_pads"),
        ("box", [-1, 0, 10, 10], "-1,0,10,10", "invalid_box"),
        ("box", [0.5, 0, 10, 10], "0.5,0,10,10", "invalid_box"),
        ("paste", "blur", "blur", "invalid_paste"),
        ("loop", "bounce", "bounce", "invalid_loop"),
        ("start_frame", -1, "-1", "invalid_start_frame"),
        ("start_frame", 2.5, "2.5", "invalid_start_frame"),
    ],
)
def test_json_and_form_refuse_the_same_values_with_the_same_code(field: str, json_value: object, form_value: str, code: str) -> None:
    for make in (lambda: Options.from_json({field: json_value}), lambda: Options.from_form({field: form_value})):
        with pytest.raises(BadRequest) as e:
            make()
        assert e.value.code == code and field in e.value.message


def test_a_box_must_lie_inside_the_image() -> None:
    Options(box=(0, 0, 512, 512)).check_box(512, 512)
    with pytest.raises(BadRequest) as e:
        Options(box=(0, 0, 513, 100)).check_box(512, 512)
    assert e.value.code == "invalid_box" and "512×512" in e.value.message


def _avatar(n: int) -> Avatar:
    frames = tuple(np.zeros((4, 4, 3), np.uint8) for _ in range(n))
    return Avatar(frames, ((0, 0, 2, 2),) * n, np.zeros((n, 6, 96, 96), np.float32), 25.0, "box", "video")


@pytest.mark.parametrize(
    ("n", "loop", "want"),
    [
        (1, "pingpong", [0, 0, 0, 0, 0]),
        (3, "repeat", [0, 1, 2, 0, 1, 2, 0]),
        (3, "pingpong", [0, 1, 2, 1, 0, 1, 2, 1]),
        (2, "pingpong", [0, 1, 0, 1, 0]),
        (3, "none", [0, 1, 2, 2, 2]),
    ],
)
def test_loop_sequences(n: int, loop: str, want: list[int]) -> None:
    assert _avatar(n).sequence(len(want), loop).tolist() == want


@pytest.mark.parametrize("loop", ["pingpong", "repeat", "none"])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_a_clip_started_at_end_frame_continues_the_sequence(loop: str, n: int) -> None:
    avatar = _avatar(n)
    whole = avatar.sequence(23, loop, start=3).tolist()
    end = avatar.end_position(10, loop, start=3)
    assert avatar.sequence(10, loop, start=3).tolist() + avatar.sequence(13, loop, start=end).tolist() == whole


def test_pingpong_never_jumps() -> None:
    seq = _avatar(7).sequence(100, "pingpong")
    assert np.abs(np.diff(seq)).max() == 1 and set(seq.tolist()) == set(range(7))
