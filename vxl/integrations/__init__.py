"""Adapters to other systems (Ray Data). Each imports its system lazily: vxl imports without them."""
