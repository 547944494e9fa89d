"""The wire contracts and their generated Python code: ``edgeinfer.v1`` (edgeinfer.proto) and the
Open Inference Protocol, KServe v2 (kserve_v2.proto, package ``inference``; imported on its own as
``edgeinfer.proto.kserve_v2_pb2``, in a descriptor pool of its own).

Regenerate with ``python proto/generate.py``; do not edit the ``*_pb2*`` files.
"""

from edgeinfer.proto import edgeinfer_pb2, edgeinfer_pb2_grpc

__all__ = ["edgeinfer_pb2", "edgeinfer_pb2_grpc"]
