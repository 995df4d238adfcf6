"""The engine options as a registry: one entry per attention backend, quantization, decode option, offload mode and
parallel layout, each saying what it needs, what it cannot be combined with and how it is applied
(`option.py` the entry's type, one module per family, `registry.py` the list, the one `validate` and the docs table)."""
