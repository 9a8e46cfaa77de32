"""The linear probe of bench/demo_probe.py reads an attribute that the features carry, and only then."""
import torch

from bench.demo_probe import probe_accuracy
from vxl.train.pretrain import HEADS


def _split(gen, n, informative: bool):
    """Features [n, 24] and labels per head (the 'not applicable' class included); when informative, the
    first columns hold a noisy one-hot of each label, otherwise the features are pure noise."""
    labels = {name: torch.randint(0, len(v) + 1, (n,), generator=gen) for name, v in HEADS.items()}
    x = torch.randn(n, 24 + sum(len(v) + 1 for v in HEADS.values()), generator=gen)
    if informative:
        col = 0
        for name, values in HEADS.items():
            x[torch.arange(n), col + labels[name]] += 5.0
            col += len(values) + 1
    return x.float(), labels


def test_probe_reads_informative_features_and_not_noise():
    gen = torch.Generator().manual_seed(3)
    good = probe_accuracy(_split(gen, 700, True), _split(gen, 301, True))
    noise = probe_accuracy(_split(gen, 700, False), _split(gen, 301, False))
    for name, values in HEADS.items():
        assert good[name]["accuracy"] > 0.9, good
        assert noise[name]["accuracy"] < 1 / len(values) + 0.15, noise
        assert good[name]["chance"] == 1 / len(values)
        # only frames the attribute applies to are scored
        assert 0 < good[name]["n_test"] < 301
