"""The agent hands each slot's streamer its credential on the streamer URL (issue 11)."""

from __future__ import annotations

import urllib.parse

from gpu_agent.config import AgentSettings
from gpu_agent.slot_plan import SlotPlan, slot_command, with_token


def test_token_rides_on_the_streamer_url() -> None:
    assert with_token("ws://h:8888", None) == "ws://h:8888"
    assert with_token("ws://h:8888/", "a.b-c_d") == "ws://h:8888/?token=a.b-c_d"
    assert with_token("ws://h:8888/?x=1", "t+/=") == "ws://h:8888/?x=1&token=t%2B%2F%3D"


def test_ue_command_line_carries_the_credential() -> None:
    s = AgentSettings(streamer="ue", ue_binary="/game/Game.sh", streamer_url="ws://10.0.1.5:8888/")
    argv, _env = slot_command(s, SlotPlan(index=0, streamer_id="h1-0"), "eyJ.abc.def")
    url = next(a for a in argv if a.startswith("-PixelStreamingURL="))
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url.split("=", 1)[1]).query)
    assert query == {"token": ["eyJ.abc.def"]}
