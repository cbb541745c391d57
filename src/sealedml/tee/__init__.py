"""How an enclave is launched and reached: the host's side of the framed protocol.

:class:`~sealedml.tee.channel.ProcessChannel` speaks frames to an enclave process over its pipes;
:class:`~sealedml.tee.client.EnclaveClient` is the typed, async API the platform uses on top;
:func:`~sealedml.tee.simulated.launch_simulated` starts the simulated TEE backend.
"""
