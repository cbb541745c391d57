"""Scale-out on Ray: attested enclave workers that share one cluster identity.

:mod:`~sealedml.distributed.worker` holds the Ray actor that owns one enclave,
:mod:`~sealedml.distributed.cluster` the coordinator that attests workers and has them join by
enclave-to-enclave transfer, :mod:`~sealedml.distributed.inference` the ordered, bounded
dispatch of shards, and :mod:`~sealedml.distributed.pool` the supervisor-compatible pool the
platform serves from. Ray is imported only when a cluster starts.
"""
