"""SealedML's cryptographic recipes, built on ``cryptography`` and nothing else.

Every parameter is fixed here; callers make no algorithm choices. This package (with the
attestation verifiers) is the only place that touches ``cryptography.hazmat``.

- :mod:`~sealedml.crypto.envelope`: the versioned binary envelope all ciphertexts use;
- :mod:`~sealedml.crypto.stream`: chunked AES-256-GCM streams for models and datasets;
- :mod:`~sealedml.crypto.request`: HPKE-sealed requests and their private responses;
- :mod:`~sealedml.crypto.sealing`: keys sealed to an enclave measurement;
- :mod:`~sealedml.crypto.signing`: Ed25519 receipt signatures.
"""
