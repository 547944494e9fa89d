"""Benchmarks: run each from the repository root as a module, e.g. ``python -m bench.serve_bench``.

serve_bench   how close the daemon serves to the model's own speed (stats, daemon, modes, report)
grpc_floor    a bare gRPC stream with the daemon's threads and no model: the floor under added latency
frame_cost    the frontend's per-frame cost: served vs in-process limit, CPU per thread, A/B variants, py-spy
aio_floor     grpc_floor on grpc.aio: a prototype that frame_cost measures next to the sync floor
quant_flows   the fx and pt2e int8 flows side by side
gpu_fp16      the CUDA path (model alone, nvJPEG, served streams); gpu_check.sh runs it on a GPU machine
stream_clients one client process per stream, for the GPU bench
Results and their discussion: bench/results/README.md.
"""
