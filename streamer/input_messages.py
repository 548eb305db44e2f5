"""Pixel Streaming data-channel messages: pure encoders and decoders, no I/O.

Every message is binary, little-endian, and starts with a one-byte message id. The
layouts are Epic's *default* protocol, as the browser frontend ships it
(``Frontend/library/src/UeInstanceMessage/StreamMessageController.ts``,
``populateDefaultProtocol``) and as ``SendMessageController.ts`` packs it:

- ``uint8``/``uint16``/``int16``/``double`` are packed little-endian, in order;
- ``string`` is a uint16 count of UTF-16 code units, then UTF-16LE text;
- mouse and touch positions are the position within the video, normalised to
  0..1 and multiplied by 65536 (``InputCoordTranslator.translateUnsigned``), so
  the right/bottom edge quantises to 65536, which ``DataView.setUint16`` wraps to 0;
  a position outside the video is sent as (65535, 65535);
- touch messages carry ``numTouches`` and then that many (x, y, idx, force, valid)
  records; the frontend always sends one touch per message, UE accepts several.

Streamer → player (``fromStreamerMessages``) is the other table. What the frontend
needs from the streamer, read from ``WebRtcPlayerController.ts``:

- Nothing on the data channel is needed to *play*: video starts from the track
  (``ontrack`` needs the track to belong to a stream, i.e. an ``a=msid`` line) and
  autoplay, not from any data-channel message.
- When the streamer sends ``Protocol`` (id 255; UTF-16LE JSON filling the rest of the
  message, ``{"Direction": 0|1, "<Name>": {"id": n, "structure": [...]}}``, where
  Direction 0 describes the to-streamer table and 1 the from-streamer table), the
  frontend replaces its tables with it and then sends ``RequestInitialSettings``
  (7) and ``RequestQualityControl`` (1). Without a ``Protocol`` it keeps its
  defaults and never asks for either.
- ``InitialSettings`` (7) is UTF-16LE JSON (``Encoder``, ``WebRTC``,
  ``PixelStreaming``, ``ConfigOptions``); the frontend only shows it (and reads
  ``ConfigOptions.DefaultToHover``). ``QualityControlOwnership`` (0) is one byte.
- An id the frontend has no handler for throws inside its ``onmessage`` (the
  ``try`` around the dispatch is commented out), so never send unknown ids.

Epic's own stand-in streamer (``Extras/JSStreamer/src/streamer.ts``) sends, on
channel open, the Direction-0 ``Protocol``, a Direction-1 ``Protocol`` (which, by
a bug there, is empty apart from ``Direction``) and ``InitialSettings``. We send
the same, with the Direction-1 table filled in.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, cast

import orjson

# --- player → streamer -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Msg:
    ID: ClassVar[int]
    LAYOUT: ClassVar[str] = ""  # struct format of the fixed fields, without "<"


@dataclass(frozen=True, slots=True)
class IFrameRequest(_Msg):
    ID = 0


@dataclass(frozen=True, slots=True)
class RequestQualityControl(_Msg):
    ID = 1


@dataclass(frozen=True, slots=True)
class FpsRequest(_Msg):
    ID = 2


@dataclass(frozen=True, slots=True)
class AverageBitrateRequest(_Msg):
    ID = 3


@dataclass(frozen=True, slots=True)
class StartStreaming(_Msg):
    ID = 4


@dataclass(frozen=True, slots=True)
class StopStreaming(_Msg):
    ID = 5


@dataclass(frozen=True, slots=True)
class LatencyTest(_Msg):
    ID = 6
    text: str


@dataclass(frozen=True, slots=True)
class RequestInitialSettings(_Msg):
    ID = 7


@dataclass(frozen=True, slots=True)
class TestEcho(_Msg):
    """Declared without payload by the frontend; a string if one follows."""

    ID = 8
    text: str = ""


@dataclass(frozen=True, slots=True)
class DataChannelLatencyTest(_Msg):
    """Declared without payload by the frontend, which still passes a JSON string."""

    ID = 9
    text: str = ""


@dataclass(frozen=True, slots=True)
class UIInteraction(_Msg):
    ID = 50
    text: str


@dataclass(frozen=True, slots=True)
class Command(_Msg):
    ID = 51
    text: str


@dataclass(frozen=True, slots=True)
class TextboxEntry(_Msg):
    ID = 52
    text: str


@dataclass(frozen=True, slots=True)
class KeyDown(_Msg):
    ID = 60
    LAYOUT = "BB"
    key_code: int
    is_repeat: bool = False


@dataclass(frozen=True, slots=True)
class KeyUp(_Msg):
    ID = 61
    LAYOUT = "B"
    key_code: int


@dataclass(frozen=True, slots=True)
class KeyPress(_Msg):
    ID = 62
    LAYOUT = "H"
    char_code: int


@dataclass(frozen=True, slots=True)
class MouseEnter(_Msg):
    ID = 70


@dataclass(frozen=True, slots=True)
class MouseLeave(_Msg):
    ID = 71


@dataclass(frozen=True, slots=True)
class MouseDown(_Msg):
    ID = 72
    LAYOUT = "BHH"
    button: int
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class MouseUp(_Msg):
    ID = 73
    LAYOUT = "BHH"
    button: int
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class MouseMove(_Msg):
    ID = 74
    LAYOUT = "HHhh"
    x: int
    y: int
    delta_x: int = 0
    delta_y: int = 0


@dataclass(frozen=True, slots=True)
class MouseWheel(_Msg):
    ID = 75
    LAYOUT = "hHH"
    delta: int
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class MouseDouble(_Msg):
    ID = 76
    LAYOUT = "BHH"
    button: int
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class TouchPoint:
    x: int
    y: int
    idx: int
    force: int
    valid: bool


@dataclass(frozen=True, slots=True)
class TouchStart(_Msg):
    ID = 80
    touches: tuple[TouchPoint, ...]


@dataclass(frozen=True, slots=True)
class TouchEnd(_Msg):
    ID = 81
    touches: tuple[TouchPoint, ...]


@dataclass(frozen=True, slots=True)
class TouchMove(_Msg):
    ID = 82
    touches: tuple[TouchPoint, ...]


@dataclass(frozen=True, slots=True)
class GamepadButtonPressed(_Msg):
    ID = 90
    LAYOUT = "BBB"
    controller_id: int
    button: int
    is_repeat: bool = False


@dataclass(frozen=True, slots=True)
class GamepadButtonReleased(_Msg):
    ID = 91
    LAYOUT = "BBB"
    controller_id: int
    button: int
    is_repeat: bool = False


@dataclass(frozen=True, slots=True)
class GamepadAnalog(_Msg):
    ID = 92
    LAYOUT = "BBd"
    controller_id: int
    axis: int
    value: float


@dataclass(frozen=True, slots=True)
class GamepadConnected(_Msg):
    ID = 93


@dataclass(frozen=True, slots=True)
class GamepadDisconnected(_Msg):
    ID = 94
    LAYOUT = "B"
    controller_id: int


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message id outside the default table (a custom message of some project)."""

    message_id: int
    payload: bytes


InputMessage = (
    IFrameRequest | RequestQualityControl | FpsRequest | AverageBitrateRequest
    | StartStreaming | StopStreaming | LatencyTest | RequestInitialSettings | TestEcho
    | DataChannelLatencyTest | UIInteraction | Command | TextboxEntry
    | KeyDown | KeyUp | KeyPress | MouseEnter | MouseLeave | MouseDown | MouseUp
    | MouseMove | MouseWheel | MouseDouble | TouchStart | TouchEnd | TouchMove
    | GamepadButtonPressed | GamepadButtonReleased | GamepadAnalog | GamepadConnected
    | GamepadDisconnected | Unknown
)  # fmt: skip

_ALL: tuple[type[_Msg], ...] = (
    IFrameRequest, RequestQualityControl, FpsRequest, AverageBitrateRequest,
    StartStreaming, StopStreaming, LatencyTest, RequestInitialSettings, TestEcho,
    DataChannelLatencyTest, UIInteraction, Command, TextboxEntry,
    KeyDown, KeyUp, KeyPress, MouseEnter, MouseLeave, MouseDown, MouseUp, MouseMove,
    MouseWheel, MouseDouble, TouchStart, TouchEnd, TouchMove,
    GamepadButtonPressed, GamepadButtonReleased, GamepadAnalog, GamepadConnected,
    GamepadDisconnected,
)  # fmt: skip
_BY_ID: dict[int, type[_Msg]] = {cls.ID: cls for cls in _ALL}
_STRUCTS: dict[type[_Msg], struct.Struct] = {cls: struct.Struct("<" + cls.LAYOUT) for cls in _ALL if cls.LAYOUT}
_STRING_REQUIRED = (LatencyTest, UIInteraction, Command, TextboxEntry)
_STRING_OPTIONAL = (TestEcho, DataChannelLatencyTest)
_TOUCHES = (TouchStart, TouchEnd, TouchMove)
_U16 = struct.Struct("<H")
_TOUCH = struct.Struct("<HHBBB")

#: The to-streamer table as the ``Protocol`` message states it (frontend field types).
#: ``DataChannelLatencyTest`` (9) is decoded but not announced: the 5.5 and 5.7
#: frontends register no sender for it and log an error when a protocol names it.
TO_STREAMER_PROTOCOL: dict[str, dict[str, Any]] = {
    "IFrameRequest": {"id": 0, "structure": []},
    "RequestQualityControl": {"id": 1, "structure": []},
    "FpsRequest": {"id": 2, "structure": []},
    "AverageBitrateRequest": {"id": 3, "structure": []},
    "StartStreaming": {"id": 4, "structure": []},
    "StopStreaming": {"id": 5, "structure": []},
    "LatencyTest": {"id": 6, "structure": ["string"]},
    "RequestInitialSettings": {"id": 7, "structure": []},
    "TestEcho": {"id": 8, "structure": []},
    "UIInteraction": {"id": 50, "structure": ["string"]},
    "Command": {"id": 51, "structure": ["string"]},
    "TextboxEntry": {"id": 52, "structure": ["string"]},
    "KeyDown": {"id": 60, "structure": ["uint8", "uint8"]},
    "KeyUp": {"id": 61, "structure": ["uint8"]},
    "KeyPress": {"id": 62, "structure": ["uint16"]},
    "MouseEnter": {"id": 70, "structure": []},
    "MouseLeave": {"id": 71, "structure": []},
    "MouseDown": {"id": 72, "structure": ["uint8", "uint16", "uint16"]},
    "MouseUp": {"id": 73, "structure": ["uint8", "uint16", "uint16"]},
    "MouseMove": {"id": 74, "structure": ["uint16", "uint16", "int16", "int16"]},
    "MouseWheel": {"id": 75, "structure": ["int16", "uint16", "uint16"]},
    "MouseDouble": {"id": 76, "structure": ["uint8", "uint16", "uint16"]},
    "TouchStart": {"id": 80, "structure": ["uint8", "uint16", "uint16", "uint8", "uint8", "uint8"]},
    "TouchEnd": {"id": 81, "structure": ["uint8", "uint16", "uint16", "uint8", "uint8", "uint8"]},
    "TouchMove": {"id": 82, "structure": ["uint8", "uint16", "uint16", "uint8", "uint8", "uint8"]},
    "GamepadButtonPressed": {"id": 90, "structure": ["uint8", "uint8", "uint8"]},
    "GamepadButtonReleased": {"id": 91, "structure": ["uint8", "uint8", "uint8"]},
    "GamepadAnalog": {"id": 92, "structure": ["uint8", "uint8", "double"]},
    "GamepadConnected": {"id": 93, "structure": []},
    "GamepadDisconnected": {"id": 94, "structure": ["uint8"]},
}


def _read_string(data: bytes, offset: int) -> tuple[str, int]:
    if len(data) < offset + 2:
        raise ValueError("truncated string length")
    (count,) = _U16.unpack_from(data, offset)
    end = offset + 2 + 2 * count
    if len(data) < end:
        raise ValueError(f"truncated string: {count} UTF-16 units announced")
    return data[offset + 2 : end].decode("utf-16-le", errors="replace"), end


def _write_string(text: str) -> bytes:
    raw = text.encode("utf-16-le", errors="surrogatepass")
    return _U16.pack(len(raw) // 2) + raw


def message_from_bytes(data: bytes) -> InputMessage:
    """Decode one player → streamer message. Raises ``ValueError`` when truncated.

    Bytes beyond the declared layout are ignored, as UE does.
    """
    if not data:
        raise ValueError("empty message")
    cls = _BY_ID.get(data[0])
    if cls is None:
        return Unknown(data[0], bytes(data[1:]))
    return cast(InputMessage, cls(*_fields_from_bytes(cls, data)))


def _fields_from_bytes(cls: type[_Msg], data: bytes) -> list[Any]:
    if cls in _STRING_REQUIRED:
        return [_read_string(data, 1)[0]]
    if cls in _STRING_OPTIONAL:
        return [_read_string(data, 1)[0] if len(data) > 1 else ""]
    if cls in _TOUCHES:
        if len(data) < 2:
            raise ValueError("truncated touch message")
        count, offset, touches = data[1], 2, []
        for _ in range(count):
            if len(data) < offset + _TOUCH.size:
                raise ValueError("truncated touch record")
            x, y, idx, force, valid = _TOUCH.unpack_from(data, offset)
            touches.append(TouchPoint(x, y, idx, force, bool(valid)))
            offset += _TOUCH.size
        return [tuple(touches)]
    layout = _STRUCTS.get(cls)
    if layout is None:
        return []
    if len(data) < 1 + layout.size:
        raise ValueError(f"truncated {cls.__name__}: {len(data)} bytes, need {1 + layout.size}")
    values = list(layout.unpack_from(data, 1))
    for i, spec in enumerate(fields(cls)):
        if spec.name.startswith("is_"):
            values[i] = bool(values[i])
    return values


def message_to_bytes(message: InputMessage) -> bytes:
    """Encode one player → streamer message exactly as the frontend does.

    Raises ``ValueError`` for a field out of its wire range.
    """
    if isinstance(message, Unknown):
        return bytes([message.message_id]) + message.payload
    head = bytes([message.ID])
    if isinstance(message, (*_STRING_REQUIRED, *_STRING_OPTIONAL)):
        text: str = message.text
        if isinstance(message, _STRING_OPTIONAL) and not text:
            return head
        return head + _write_string(text)
    try:
        if isinstance(message, _TOUCHES):
            touches = message.touches
            body = b"".join(_TOUCH.pack(t.x, t.y, t.idx, t.force, int(t.valid)) for t in touches)
            return head + bytes([len(touches)]) + body
        layout = _STRUCTS.get(type(message))
        if layout is None:
            return head
        values = [getattr(message, f.name) for f in fields(message)]
        return head + layout.pack(*(int(v) if isinstance(v, bool) else v for v in values))
    except (struct.error, ValueError) as exc:
        raise ValueError(f"cannot encode {message!r}: {exc}") from exc


# --- coordinates -----------------------------------------------------------------


def quantize(position: float, size: float) -> int:
    """Pixel position within the video → the frontend's uint16 (wraps 65536 to 0)."""
    if not 0 <= position <= size or size <= 0:
        return 65535
    return int(position / size * 65536) & 0xFFFF


def dequantize(value: int, size: int) -> int:
    """The frontend's uint16 → pixel index within ``size``, clamped."""
    return min(size - 1, max(0, value * size // 65536))


# --- streamer → player -----------------------------------------------------------

FROM_STREAMER_IDS: dict[str, int] = {
    "QualityControlOwnership": 0,
    "Response": 1,
    "Command": 2,
    "FreezeFrame": 3,
    "UnfreezeFrame": 4,
    "VideoEncoderAvgQP": 5,
    "LatencyTest": 6,
    "InitialSettings": 7,
    "FileExtension": 8,
    "FileMimeType": 9,
    "FileContents": 10,
    "TestEcho": 11,
    "InputControlOwnership": 12,
    "GamepadResponse": 13,
    "DataChannelLatencyTest": 14,
    "Protocol": 255,
}
_FROM_STREAMER_NAMES = {v: k for k, v in FROM_STREAMER_IDS.items()}
_FROM_STREAMER_TEXT = {1, 2, 5, 6, 7, 11, 13, 14, 255}  # UTF-16LE filling the message
_FROM_STREAMER_FLAG = {0, 12}  # one uint8 boolean

#: The streamer's reply to ``RequestInitialSettings``; values like Epic's JSStreamer.
DEFAULT_INITIAL_SETTINGS: dict[str, Any] = {
    "PixelStreaming": {"AllowPixelStreamingCommands": False, "DisableLatencyTest": False},
    "Encoder": {
        "TargetBitrate": -1,
        "MaxBitrate": 20000000,
        "MinQP": 0,
        "MaxQP": 51,
        "RateControl": "CBR",
        "FillerData": 0,
        "MultiPass": "FULL",
    },
    "WebRTC": {
        "DegradationPref": "MAINTAIN_FRAMERATE",
        "FPS": 30,
        "MinBitrate": 100000,
        "MaxBitrate": 100000000,
        "LowQP": 25,
        "HighQP": 37,
    },
    "ConfigOptions": {},
}


@dataclass(frozen=True, slots=True)
class StreamerMessage:
    """A decoded streamer → player message: ``text`` for the string kinds,
    ``flag`` for the one-byte kinds, ``payload`` always (without the id byte)."""

    message_id: int
    name: str
    payload: bytes = field(repr=False)
    text: str | None = None
    flag: bool | None = None

    def json(self) -> Any:
        """The parsed JSON of a text message (``Protocol``, ``InitialSettings``, …)."""
        if self.text is None:
            raise ValueError(f"{self.name} carries no text")
        return orjson.loads(self.text)


def _text_message(message_id: int, text: str) -> bytes:
    return bytes([message_id]) + text.encode("utf-16-le")


def protocol_message(direction: int) -> bytes:
    """``Protocol`` (255): Direction 0 is the to-streamer table, 1 the from-streamer one."""
    table: dict[str, Any] = {"Direction": direction}
    if direction == 0:
        table.update(TO_STREAMER_PROTOCOL)
    else:
        table.update({name: {"id": i} for name, i in FROM_STREAMER_IDS.items()})
    return _text_message(255, orjson.dumps(table).decode())


def initial_settings_message(settings: dict[str, Any] | None = None) -> bytes:
    return _text_message(7, orjson.dumps(settings or DEFAULT_INITIAL_SETTINGS).decode())


def quality_control_ownership_message(owner: bool) -> bytes:
    return bytes([0, int(owner)])


def input_control_ownership_message(owner: bool) -> bytes:
    return bytes([12, int(owner)])


def video_encoder_avg_qp_message(qp: float) -> bytes:
    return _text_message(5, str(round(qp)))


def streamer_message_from_bytes(data: bytes) -> StreamerMessage:
    """Decode one streamer → player message (what the frontend's handlers read)."""
    if not data:
        raise ValueError("empty message")
    message_id, payload = data[0], bytes(data[1:])
    name = _FROM_STREAMER_NAMES.get(message_id, f"Unknown{message_id}")
    if message_id in _FROM_STREAMER_FLAG:
        if not payload:
            raise ValueError(f"truncated {name}")
        return StreamerMessage(message_id, name, payload, flag=bool(payload[0]))
    if message_id in _FROM_STREAMER_TEXT:
        if len(payload) % 2:
            raise ValueError(f"truncated {name}: odd UTF-16 length")
        return StreamerMessage(message_id, name, payload, text=payload.decode("utf-16-le"))
    return StreamerMessage(message_id, name, payload)
