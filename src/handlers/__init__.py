"""Entry points only: the long-lived gRPC server (``server``), the CLI (``cli``), the Lambda
functions (``expiry_check``, ``config_change``; shared set-up in ``lambda_support``) and their
shared composition root (``composition``). Handlers parse input, call ``ca_core`` through what
``composition`` built, and map results and errors to their output (design §10)."""
