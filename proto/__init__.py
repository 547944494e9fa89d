"""The wire contract (edgeinfer.v1) and its generated Python code.

Regenerate with ``python proto/generate.py``; do not edit the ``*_pb2*`` files.
"""

from edgeinfer.proto import edgeinfer_pb2, edgeinfer_pb2_grpc

__all__ = ["edgeinfer_pb2", "edgeinfer_pb2_grpc"]
