"""Entry points: the long-lived gRPC server (``server``), the CLI (``cli``), the Lambda functions
(``expiry_check``, ``config_change``; shared set-up in ``lambda_support``; ``local_invoke`` runs
them in-process), and their shared composition root (``composition``). Handlers parse input,
call ``ca_core`` and map results."""
