"""The Open Inference Protocol (KServe V2, as Triton and KServe speak it), as plain functions
and dataclasses: no HTTP framework, no model run. docs/api_v2.md documents the interface.

``tensors``: tensors, the request and the response in protocol terms, REST- and gRPC-neutral.
``rest`` / ``grpc_wire``: those to and from REST bodies (with the binary tensor data
extension) and gRPC messages. ``interface``: this server's model in the protocol: its inputs
and outputs, a request checked against them, the response built from the computed maps, and
the metadata documents. ``errors``: the protocol's error shape and statuses.
"""
