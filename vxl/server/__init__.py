"""The online layer's HTTP front: an OpenAI-compatible server over the engine core (`vxl serve`)."""
