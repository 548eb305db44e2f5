"""Epic's data-channel input format: golden bytes, round trips, truncation, unknown ids."""

from __future__ import annotations

import struct

import pytest

from streamer import input_messages as im

SAMPLES: list[im.InputMessage] = [
    im.IFrameRequest(),
    im.RequestQualityControl(),
    im.FpsRequest(),
    im.AverageBitrateRequest(),
    im.StartStreaming(),
    im.StopStreaming(),
    im.LatencyTest('{"StartTime":1}'),
    im.RequestInitialSettings(),
    im.TestEcho(),
    im.TestEcho("echo"),
    im.DataChannelLatencyTest('{"Seq":1}'),
    im.UIInteraction("héllo ✓"),
    im.Command('{"Resolution.Width":1280}'),
    im.TextboxEntry(""),
    im.KeyDown(65),
    im.KeyDown(13, is_repeat=True),
    im.KeyUp(65),
    im.KeyPress(0x263A),
    im.MouseEnter(),
    im.MouseLeave(),
    im.MouseDown(2, 0, 65535),
    im.MouseUp(0, 32768, 1),
    im.MouseMove(100, 200, -3, 4),
    im.MouseWheel(-120, 10, 20),
    im.MouseDouble(0, 5, 6),
    im.TouchStart((im.TouchPoint(1, 2, 0, 255, True),)),
    im.TouchEnd((im.TouchPoint(1, 2, 0, 0, False), im.TouchPoint(3, 4, 1, 128, True))),
    im.TouchMove(()),
    im.GamepadButtonPressed(1, 7, True),
    im.GamepadButtonReleased(1, 7),
    im.GamepadAnalog(0, 3, -0.25),
    im.GamepadConnected(),
    im.GamepadDisconnected(2),
    im.Unknown(200, b"custom"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: im.InputMessage) -> None:
    assert im.message_from_bytes(im.message_to_bytes(message)) == message


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        # id, then little-endian fields exactly as SendMessageController packs them
        (im.MouseMove(100, 200, -3, 4), "4a6400c800fdff0400"),
        (im.MouseDown(1, 0x1234, 0xABCD), "48013412cdab"),
        (im.MouseUp(0, 1, 2), "490001000200"),
        (im.MouseWheel(-1, 3, 4), "4bffff03000400"),
        (im.KeyDown(65, True), "3c4101"),
        (im.KeyUp(66), "3d42"),
        (im.KeyPress(0x20AC), "3eac20"),
        (im.MouseEnter(), "46"),
        (im.UIInteraction("hi"), "32020068006900"),  # uint16 length in UTF-16 units
        (im.TouchStart((im.TouchPoint(1, 2, 3, 255, True),)), "50010100020003ff01"),
        (im.GamepadAnalog(1, 2, 0.5), "5c0102" + struct.pack("<d", 0.5).hex()),
    ],
)
def test_golden_bytes(message: im.InputMessage, wire: str) -> None:
    assert im.message_to_bytes(message).hex() == wire
    assert im.message_from_bytes(bytes.fromhex(wire)) == message


@pytest.mark.parametrize(
    "message",
    [
        m
        for m in SAMPLES
        if len(im.message_to_bytes(m)) > 1
        and not isinstance(m, im.Unknown)
        and not isinstance(m, (im.TestEcho, im.DataChannelLatencyTest))
    ],
    ids=lambda m: type(m).__name__,
)
def test_truncated_payload_is_a_value_error(message: im.InputMessage) -> None:
    wire = im.message_to_bytes(message)
    with pytest.raises(ValueError):
        im.message_from_bytes(wire[:-1])


def test_string_longer_than_announced_payload_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        im.message_from_bytes(bytes.fromhex("3205006800"))


def test_trailing_bytes_are_ignored() -> None:
    assert im.message_from_bytes(bytes.fromhex("3d42ffff")) == im.KeyUp(66)


def test_unknown_id_keeps_its_payload() -> None:
    assert im.message_from_bytes(b"\x63\x01\x02") == im.Unknown(99, b"\x01\x02")
    assert im.message_from_bytes(b"\xfe") == im.Unknown(254, b"")


def test_empty_message_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        im.message_from_bytes(b"")


@pytest.mark.parametrize(
    "message",
    [im.MouseMove(65536, 0), im.MouseMove(0, 0, 40000, 0), im.KeyDown(256), im.MouseDown(-1, 0, 0)],
)
def test_out_of_range_fields_do_not_encode(message: im.InputMessage) -> None:
    with pytest.raises(ValueError):
        im.message_to_bytes(message)


def test_protocol_table_matches_the_codecs() -> None:
    """The Direction-0 Protocol we announce must describe exactly what we decode."""
    to_struct = {"uint8": "B", "uint16": "H", "int16": "h", "double": "d"}
    table = im.streamer_message_from_bytes(im.protocol_message(0)).json()
    assert table.pop("Direction") == 0
    classes = {cls.__name__: cls for cls in im._ALL}
    assert set(table) == set(classes) - {"DataChannelLatencyTest"}  # the frontend has no sender
    for name, spec in table.items():
        cls = classes[name]
        assert spec["id"] == cls.ID, name
        if name.startswith("Touch"):
            assert spec["structure"][0] == "uint8"
        elif "string" in spec["structure"]:
            assert cls in im._STRING_REQUIRED
        else:
            assert "".join(to_struct[t] for t in spec["structure"]) == cls.LAYOUT, name


def test_from_streamer_protocol_lists_every_id() -> None:
    table = im.streamer_message_from_bytes(im.protocol_message(1)).json()
    assert table.pop("Direction") == 1
    assert {name: spec["id"] for name, spec in table.items()} == im.FROM_STREAMER_IDS


def test_streamer_messages_decode() -> None:
    settings = im.streamer_message_from_bytes(im.initial_settings_message({"WebRTC": {"FPS": 60}}))
    assert settings.name == "InitialSettings"
    assert settings.json() == {"WebRTC": {"FPS": 60}}
    assert settings.payload == '{"WebRTC":{"FPS":60}}'.encode("utf-16-le")  # no BOM, no length
    owner = im.streamer_message_from_bytes(im.quality_control_ownership_message(True))
    assert (owner.name, owner.flag) == ("QualityControlOwnership", True)
    control = im.streamer_message_from_bytes(im.input_control_ownership_message(False))
    assert (control.name, control.flag) == ("InputControlOwnership", False)
    assert im.streamer_message_from_bytes(im.video_encoder_avg_qp_message(27.4)).text == "27"
    assert im.streamer_message_from_bytes(b"\x03\x01\x02").name == "FreezeFrame"
    with pytest.raises(ValueError):
        im.streamer_message_from_bytes(b"\x00")
    with pytest.raises(ValueError):
        im.streamer_message_from_bytes(b"\x07\x41")  # half a UTF-16 unit


def test_quantize_follows_the_frontend() -> None:
    assert im.quantize(0, 1280) == 0
    assert im.quantize(640, 1280) == 32768
    assert im.quantize(1280, 1280) == 0  # 1.0 * 65536 wraps in DataView.setUint16
    assert im.quantize(-1, 1280) == 65535  # outside the video
    assert im.dequantize(32768, 1280) == 640
    assert im.dequantize(65535, 1280) == 1279
