"""Root and issuer rotation without downtime (design §5): a pure state machine.

Inputs are the bundle in force, its rotation state, ``now`` and a ``RotationPolicy``; the output
is the next bundle and state plus the steps taken (a ``Rotation``), or None when there is
nothing to do. No clock, environment or I/O here (new keys come from the OS's randomness, as in
``bundle.generate_bundle``): the CLI and the server's upkeep call these functions and write the
result with ``store.replace(items, expected_version)``, so with several replicas one writer wins
each step and the others load its bundle.

The modules, in reading order (after SPIRE's CA manager: slot, journal, manager, rotator):

- ``state``: the values: the slots (prepared root and issuer, retiring and removed roots), the
  ``RotationState``, the ``RotationPolicy``, a ``Step`` and a ``Rotation``; the constants of the
  rules; helpers the other modules share (margins, the active root).
- ``rules``: the rules in force and the steps they take by themselves: ``advance`` (every step
  due now: bound, prune, activate, automatic prepare) and ``next_step_due``.
- ``actions``: what the operator asks for: ``prepare_root``, ``emergency_root``,
  ``rotate_issuer`` (with the checks of a supplied issuer).
- ``jwt_keys``: JWT key rotation (design §5.17): the rules ``advance`` takes for the JWT key
  (prune, activate, automatic prepare) and ``rotate_jwt_key``, what ``rotate jwt-key`` asks for.
- ``codec``: ``rotation.json`` written and read strictly (``encode_state``, ``parse_state``: its
  format is described there), and ``describe`` for ``sentryca rotate status``; its ``jwt``
  section in ``jwt_codec``.
- ``document``: the same document read leniently, cheap to import: the end of each prepared
  chain (signing coverage), the roots a replacement may drop (trust continuity) and the public
  part the stores publish.

Import the module you need (``from ca_core.rotation.rules import advance``); this package
re-exports nothing, so that importing ``ca_core.rotation.document`` (the expiry function does, on
every cold start) loads none of the machinery.
"""
