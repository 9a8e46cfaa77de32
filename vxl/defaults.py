"""The defaults a request or command falls back on, in one place, so the same question gets the same answer
offline, served, in a batch job and from the CLI (DESIGN section 7)."""

MODEL = "demo"          # the built-in model the commands run when none is named
NUM_FRAMES = 128        # frames sampled from a video file when a request gives no num_frames (the released
                        # evaluation setting: lmms-eval max_frames_num=128); arrays give all their frames
MAX_TOKENS = 64         # the answer budget when a request gives none (SamplingParams, server, CLI, batch)
EVAL_MAX_NEW_TOKENS = 1024      # lmms-eval: the budget when a task's generation kwargs give none
