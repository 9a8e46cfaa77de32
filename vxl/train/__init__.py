"""Training of the shipped "demo" Video-XL: synthetic long-video tasks (data, render), the differentiable
training forward (forward, batch), the small architecture and its tokenizer (arch, tokenizer), stage-0
pretraining (pretrain), the loop and its CLI (loop, __main__), evaluation (evaluate, report) and the
`vxl demo` episode (demo)."""
