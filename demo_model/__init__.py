"""How the shipped `demo` checkpoint (vxl/data/demo) was trained and is evaluated: a small Video-XL trained on
synthetic long videos. Not part of the installed package; run from the repository root (see README.md)."""
