"""vxl benchmarks: `bench.e2e` (frames x compression ratio sweep, scaling fit, max-frames search) and
`bench.niah` (video needle-in-a-haystack). Run from the repository root: `python -m bench.e2e --help`."""
