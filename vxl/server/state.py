"""What the server's routes share (one `Server` per app, at `app.state.vxl`): the engine, its async front,
the live streams, the video cache, the metrics, the media caps and the served model's name."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

if TYPE_CHECKING:
    from vxl.server.async_llm import AsyncLLM
    from vxl.server.media import MediaLimits
    from vxl.server.metrics import ServerMetrics
    from vxl.server.streams import StreamRegistry
    from vxl.server.video_cache import VideoCache


@dataclass
class Server:
    llm: object
    engine: "AsyncLLM"
    streams: "StreamRegistry"
    cache: "VideoCache | None"
    metrics: "ServerMetrics"
    limits: "MediaLimits"
    served_model_name: str
    max_queued: int
    closing: threading.Event = field(default_factory=threading.Event)      # set when the server shuts down


def server_of(request: Request) -> Server:
    return request.app.state.vxl
