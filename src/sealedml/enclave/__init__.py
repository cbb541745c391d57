"""THE TRUSTED COMPUTING BASE: everything that runs inside the enclave.

It imports only ``sealedml.crypto``, the evidence-producing half of ``sealedml.attestation``,
``sealedml.errors`` and the ML runtime (numpy, onnxruntime). Never the platform, the web service,
the database or the marketplace: ``tests/test_tcb_imports.py`` enforces it. The host reaches this
code only through the framed protocol in :mod:`sealedml.enclave.framing`.
"""
