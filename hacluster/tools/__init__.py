"""Operator and application tools: the CLI (``cli``, ``ctl``), the Python client (``client``),
the local demo (``demo``) and local-cluster helpers (``local``). They talk to nodes over HTTP
only; nothing here may import the node process or the consensus loop."""
