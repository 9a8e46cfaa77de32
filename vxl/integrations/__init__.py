"""Adapters to other systems: Ray Data (`ray`, imported lazily), lmms-eval (`lmms_eval`, loaded by lmms-eval
through its plugin entry point). vxl imports without them."""
