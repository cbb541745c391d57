"""The untrusted host: HTTP API, catalog, blob storage and the relay to the enclave.

Nothing in this package ever holds a key or a plaintext model, input or output.
"""

from sealedml.platform.settings import Settings

__all__ = ["Settings"]
