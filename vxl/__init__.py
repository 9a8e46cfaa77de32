"""vxl: a Triton-accelerated inference engine for Video-XL (hour-long video understanding with
Visual Summarization Tokens). Public API: DESIGN.md section 5."""
from vxl.config import IMAGE_TOKEN_INDEX
from vxl.engine.llm import LLM
from vxl.engine.request import Request, RequestOutput
from vxl.engine.sampler import SamplingParams
from vxl.engine.video_memory import VideoMemory

__all__ = ["LLM", "SamplingParams", "Request", "RequestOutput", "IMAGE_TOKEN_INDEX", "VideoMemory"]
__version__ = "0.1.0"
