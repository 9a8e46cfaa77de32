"""Hypothesis profiles of the fuzz suites. "vxl-fuzz" is the bounded run of the ordinary test command
(fixed seed, a few dozen examples per property); VXL_FUZZ_EXAMPLES=N selects "vxl-fuzz-long": N examples
per property, fresh random seeds. Tests pick one with `fuzz_common.fuzz_settings()`; the global default profile
is never loaded or changed. No example database: the suites write nothing into the checkout."""
from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

BOUNDED_EXAMPLES = 30
PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]   # no explain: slow
_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture,
           HealthCheck.filter_too_much]

settings.register_profile("vxl-fuzz", max_examples=BOUNDED_EXAMPLES, deadline=None, derandomize=True,
                          database=None, suppress_health_check=_CHECKS, print_blob=True, phases=PHASES)
settings.register_profile("vxl-fuzz-long", max_examples=int(os.environ.get("VXL_FUZZ_EXAMPLES") or 1), deadline=None,
                          database=None, suppress_health_check=_CHECKS, print_blob=True, phases=PHASES)
