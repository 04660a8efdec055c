"""The stateless core of the CA: identities, CSRs, signing, trust bundles, validators, expiry and
rotation rules.

Rules only: everything here takes its inputs (bundle, request, ``now``) and returns values. No
clock is read, no environment is looked up, no network or disk is touched; whatever talks to
something lives in ``adapters`` and reaches the core through small ports (design §10).
"""
