"""Entry points: the long-lived gRPC server (``server``), the CLI (``cli``), and their shared
composition root (``composition``). Handlers parse input, call ``ca_core`` and map results."""
