"""The stateless core of the CA: identities, CSRs, signing, trust bundles, validators, expiry rules.

Everything here takes its inputs (bundle, request, ``now``) and returns values: no clocks are
read, no environment is looked up, no network or disk is touched outside ``ca_core.stores``.
"""
