"""wanq: self-hosted Wan2.2 video generation. `wanq.client` is the Python client."""

__version__ = "0.1.0"
