"""The frontend's per-frame cost: served over one stream against the in-process limit, interleaved.

    python -m bench.frame_cost                                  # ~1-2 min: int8 SqueezeNet 1.0, 224x224 JPEGs
    python -m bench.frame_cost --b-env OMP_WAIT_POLICY=PASSIVE  # A/B: a second daemon with this environment
    python -m bench.frame_cost --a-ref HEAD~1                   # A/B: daemon + client of a git ref vs the tree
    python -m bench.frame_cost --profile 8                      # and py-spy both processes for 8 s of served frames
    python -m bench.frame_cost --tiny --out /tmp/f              # what the test suite runs

A client *process* (this file's ``client`` command: no torch in it) streams a
folder of pre-read JPEG bytes back to back (policy all, one stream) to an
``edgeserver`` serving int8 SqueezeNet 1.0 on the same cores; in chunks that
alternate with those chunks, this process runs the in-process limit on the same
files (decode + preprocess + int8 model + top-k, on one inference thread, as the
daemon does). Then one frame in flight at a time, the same way. Reported:

  served/limit          frames/s served over frames/s in process (the issue's target: >= 0.85)
  overhead ms/frame     served ms per frame minus the limit's: what the frontend costs, whatever the model takes
  added latency p50     one frame in flight, served p50 minus the limit's p50 (target: <= 1.0 ms)
  client library        EdgeClient.stream's own work per frame (request building, protobuf serialize and
                        parse, FrameResult) against a stub that answers at once in process: no gRPC, no
                        threads; and the same client over real gRPC to a bare server that answers at once
                        (bench/grpc_floor.py holding 0 ms): the client library + gRPC's floor, per frame

With a B variant (``--b-env``, ``--b-ref``, or ``--a-ref``/``--a-env`` against the tree), two daemons
and two client processes run; every chunk of the limit is followed by one chunk of each variant, rotating
the order, so both variants see the same noise. ``--profile S`` records py-spy (native frames, idle
samples, per thread) on the daemon and the client process for S seconds of served frames, and on the
client once more with ``--gil``; the per-thread breakdown goes into the JSON and the plot.
Writes frame_cost.json and frame_cost.png into ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.frame_client import MODEL, PRECISION, ROOT, client_main, read_folder, write_folder
from bench.frame_cost_report import (
    _cost_summary,
    _median_stages,
    _uptime,
    plot,
    print_table,
    served_ratios,
)
from bench.stats import log, pct
from bench.thread_cpu import (
    Profiler,
    add_into,
    cpu_delta,
    per_frame_cpu,
    thread_cpu,
    thread_names,
)

# The bare floors, answering each frame at once: the daemon's sync layout, and the grpc.aio prototype.
FLOORS = {"floor sync": "bench.grpc_floor", "floor aio": "bench.aio_floor"}
PACKAGES = ("proto", "media", "server", "client", "quant")  # pyproject's package-dir: edgeinfer.<name> = <name>/

__all__ = ["main"]


# --- the driver (torch: the in-process limit) -----------------------------------------------


class ClientProcess:
    def __init__(self, target: str, folder: Path, env: dict[str, str], model: str = MODEL) -> None:
        cmd = [sys.executable, "-m", "bench.frame_client", "--target", target, "--folder", str(folder)]
        cmd += ["--model", model]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=os.environ | env
        )
        hello = self._read()
        self.pid = int(hello["pid"])

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"frame_cost client exited with {self.proc.wait()}")
        return json.loads(line)

    def ask(self, cmd: str, n: int) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{cmd} {n}\n")
        self.proc.stdin.flush()
        return self._read()

    def stop(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def export_ref(ref: str, into: Path) -> Path:
    """The packages of git ``ref`` laid out as ``edgeinfer.*`` under ``into``: PYTHONPATH=into runs them."""
    for name in PACKAGES:
        dest = into / "edgeinfer" / name
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", ref, name], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest), "--strip-components=1"], input=archive, check=True)
    return into


class Limit:
    """decode + preprocess + int8 model + top-k on the daemon's inference thread, in this process."""

    def __init__(self, repository: Path) -> None:
        from edgeinfer.server import WeightsSource, load_model
        from edgeinfer.server.inference_thread import cpu_thread

        self.thread = cpu_thread()
        self.model = load_model(
            MODEL, precision=PRECISION, repository=repository, weights=WeightsSource("random", seed=0)
        )

    def run(self, jpegs: list[bytes]) -> dict:
        return self.thread.call(lambda: self._run(jpegs))

    def _run(self, jpegs: list[bytes]) -> dict:
        from edgeinfer.server.preprocess import JpegImage

        runner = self.model.scheduler.runner
        lat, stages = [], {"decode": [], "preprocess": [], "inference": []}
        t_all = time.perf_counter()
        for data in jpegs:
            t = time.perf_counter()
            pre = self.model.preprocessor(JpegImage(data))
            out = runner.infer(pre.tensor[None], 5)
            lat.append((time.perf_counter() - t) * 1e3)
            stages["decode"].append(pre.decode_ms)
            stages["preprocess"].append(pre.preprocess_ms)
            stages["inference"].append(out.inference_ms)
        return {"frames": len(jpegs), "seconds": time.perf_counter() - t_all, "latencies_ms": lat, "stages": stages}

    def stop(self) -> None:
        self.model.stop()


# --- main ------------------------------------------------------------------------------------------------


def _variant(ref: str | None, env: list[str], tmp: Path, label: str, threads: int) -> dict:
    extra = dict(kv.split("=", 1) for kv in env)
    if ref:
        extra["PYTHONPATH"] = str(export_ref(ref, tmp / f"src-{label}"))
    return {"label": label, "ref": ref or "working tree", "env": extra, "threads": threads}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, help="JPEGs to stream (default: 16 synthetic 224x224 frames)")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    p.add_argument("--chunk", type=int, default=40, help="frames per chunk, back to back")
    p.add_argument("--latency-chunk", type=int, default=15, help="frames per chunk, one in flight")
    p.add_argument("--cost-frames", type=int, default=400, help="frames through the in-process stub")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads, daemon and in-process alike")
    p.add_argument("--a-ref", help="git ref the A daemon and client run (default: the working tree)")
    p.add_argument("--a-env", action="append", default=[], metavar="NAME=VALUE", help="A daemon's environment")
    p.add_argument("--b-ref", help="git ref for B (default: the working tree)")
    p.add_argument("--b-env", action="append", default=[], metavar="NAME=VALUE", help="B daemon's environment")
    p.add_argument("--b-threads", type=int, help="B daemon's --threads (default: --threads)")
    p.add_argument("--b-arg", action="append", default=[], help="an edgeserver argument for B only (--b-arg=--x=y)")
    p.add_argument("--profile", type=float, default=0.0, metavar="SECONDS", help="py-spy A's served frames this long")
    p.add_argument("--profile-rate", type=int, default=500)
    p.add_argument("--repository", type=Path, default=ROOT / "bench" / "results" / "model-repo")
    p.add_argument("--tiny", action="store_true", help="a few frames of everything (the test suite)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    if args.tiny:
        args.rounds, args.chunk, args.latency_chunk, args.cost_frames = 2, 6, 4, 20
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from bench.daemon import DaemonProcess, FloorProcess
    from bench.grpc_floor import busy_model
    from bench.serve_bench import ensure_int8

    torch.set_num_threads(args.threads)
    ensure_int8([MODEL], args.repository, args.tiny)
    tmp = Path(tempfile.mkdtemp(prefix="frame-cost-"))
    folder = args.folder or write_folder(tmp / "frames", 16, 224)
    jpegs = read_folder(folder)
    if not jpegs:
        raise SystemExit(f"no .jpg files in {folder}")
    variants = [_variant(args.a_ref, args.a_env, tmp, "A", args.threads)]
    if args.b_ref or args.b_env or args.a_ref or args.a_env or args.b_threads or args.b_arg:
        variants.append(_variant(args.b_ref, args.b_env, tmp, "B", args.b_threads or args.threads))
        variants[-1]["args"] = tuple(args.b_arg)
    uptime = [_uptime()]
    daemons, clients, floors, floor_clients = [], [], {}, {}
    results: dict[str, Any] = {
        "config": {k: str(v) for k, v in vars(args).items()},
        "frames_in_folder": len(jpegs),
        # Where the limit runs (this process) and what every daemon inherits unless a variant sets it.
        "environment": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_"))},
    }
    try:
        limit = Limit(args.repository)
        for v in variants:
            log(f"starting edgeserver {v['label']} ({v['ref']}, env {v['env']})")
            d = DaemonProcess(
                [f"{MODEL}:{PRECISION}"], args.repository, v["threads"], None, 8, v.get("args", ()), env=v["env"]
            )
            daemons.append(d)
            clients.append(ClientProcess(f"127.0.0.1:{d.port}", folder, v["env"]))
        for kind in FLOORS:
            floors[kind] = FloorProcess(args.threads, FLOORS[kind])
            floor_clients[kind] = ClientProcess(floors[kind].target, folder, {}, model=busy_model(0.0))
        # The limit reads the folder in the order each client process does: chunk after chunk, cycling.
        folder_order = itertools.cycle(jpegs)
        limit.run(list(itertools.islice(folder_order, 4)))  # warm
        for c in clients:
            c.ask("throughput", 4)
        # Every long-lived thread exists now (OpenMP's team, gRPC's pool, the client's channel).
        pids = [os.getpid()] + [d.proc.pid for d in daemons] + [c.pid for c in clients]
        names = {pid: thread_names(pid) for pid in pids}
        limit_cpu: dict[str, float] = {}  # this process's threads over the limit's chunks
        tput: dict[str, list[dict]] = {"limit": []} | {v["label"]: [] for v in variants} | {k: [] for k in FLOORS}
        lat: dict[str, list[dict]] = {"limit": []} | {v["label"]: [] for v in variants} | {k: [] for k in FLOORS}
        # CPU seconds per thread over the served chunks: {variant: {"daemon" | "client": {thread: s}}}
        cpu: dict[str, dict[str, dict[str, float]]] = {v["label"]: {"daemon": {}, "client": {}} for v in variants}
        t_start = time.perf_counter()
        for r in range(args.rounds):
            log(f"round {r + 1}/{args.rounds} ({time.perf_counter() - t_start:.0f} s)")
            # The limit, then every variant, each chunk starting with a different one.
            order = ["limit", *[v["label"] for v in variants], *FLOORS]
            order = order[r % len(order) :] + order[: r % len(order)]
            for who in order:
                if who == "limit":
                    before_limit = thread_cpu(os.getpid(), names[os.getpid()])
                    tput["limit"].append(limit.run(list(itertools.islice(folder_order, args.chunk))))
                    add_into(limit_cpu, cpu_delta(before_limit, thread_cpu(os.getpid(), names[os.getpid()])))
                elif who in FLOORS:
                    tput[who].append(floor_clients[who].ask("throughput", args.chunk))
                else:
                    i = ord(who) - ord("A")
                    pids = {"daemon": daemons[i].proc.pid, "client": clients[i].pid}
                    before = {side: thread_cpu(pid, names[pid]) for side, pid in pids.items()}
                    tput[who].append(clients[i].ask("throughput", args.chunk))
                    for side, pid in pids.items():
                        add_into(cpu[who][side], cpu_delta(before[side], thread_cpu(pid, names[pid])))
            for who in order:
                if who == "limit":
                    lat["limit"].append(limit.run(list(itertools.islice(folder_order, args.latency_chunk))))
                elif who in FLOORS:
                    lat[who].append(floor_clients[who].ask("latency", args.latency_chunk))
                else:
                    lat[who].append(clients[ord(who) - ord("A")].ask("latency", args.latency_chunk))
            uptime.append(_uptime())
        log("client library, against an in-process stub that answers at once")
        cost = [clients[0].ask("cost", args.cost_frames) for _ in range(3)]
        if len(variants) > 1:
            cost_b = [clients[1].ask("cost", args.cost_frames) for _ in range(3)]
        profile: dict[str, Any] = {}
        if args.profile:
            profile = _profile(args, daemons[0], clients[0], tmp)
            uptime.append(_uptime())
        limit.stop()
    finally:
        for c in clients:
            c.stop()
        for d in daemons:
            d.stop()
        for kind in floors:
            if kind in floor_clients:
                floor_clients[kind].stop()
            floors[kind].stop()

    lim_lat = [x for c in lat["limit"] for x in c["latencies_ms"]]
    lim_inf = [x for c in lat["limit"] for x in c["stages"]["inference"]]
    results["limit"] = {
        "ms_per_frame": sum(c["seconds"] for c in tput["limit"]) * 1e3 / sum(c["frames"] for c in tput["limit"]),
        "stages_ms": _median_stages(tput["limit"]),
        "latency_p50_ms": pct(lim_lat, 50),
        "frames": sum(c["frames"] for c in tput["limit"]),
        "latency_frames": len(lim_lat),
        "cpu_ms_per_frame": per_frame_cpu(limit_cpu, sum(c["frames"] for c in tput["limit"])),
    }
    # The bare floors answer at once: what gRPC Python and the client cost per frame, with no model.
    results["grpc_floor"] = {
        kind: {
            "ms_per_frame": sum(c["seconds"] for c in tput[kind]) * 1e3 / sum(c["frames"] for c in tput[kind]),
            "frames": sum(c["frames"] for c in tput[kind]),
            "latency_p50_ms": pct([x for c in lat[kind] for x in c["latencies_ms"]], 50),
            "latency_frames": sum(len(c["latencies_ms"]) for c in lat[kind]),
        }
        for kind in FLOORS
    }
    results["variants"] = {}
    for v in variants:
        label = v["label"]
        served_lat = [x for c in lat[label] for x in c["latencies_ms"]]
        served_inf = [x for c in lat[label] for x in c["inference_ms"]]
        results["variants"][label] = {
            "ref": v["ref"],
            "env": {k: val for k, val in v["env"].items() if k != "PYTHONPATH"},
            "daemon_threads": v["threads"],
            "daemon_args": list(v.get("args", ())),
            **served_ratios(tput["limit"], tput[label]),
            "served_frames": sum(c["frames"] for c in tput[label]),
            # CPU time, not wall time: what a shared machine's load moves least. Served (daemon + client
            # process, every thread) minus the limit's (this process's threads), per frame.
            "cpu_overhead_ms_per_frame": sum(
                sum(per_frame_cpu(threads, sum(c["frames"] + 1 for c in tput[label])).values())
                for threads in cpu[label].values()
            )
            - sum(results["limit"]["cpu_ms_per_frame"].values()),
            "latency_frames": len(served_lat),
            "served_stages_ms": _median_stages(tput[label]),
            # What each thread spent on a CPU per frame served (the first answer of each chunk counts too).
            "cpu_ms_per_frame": {
                side: per_frame_cpu(threads, sum(c["frames"] + 1 for c in tput[label]))
                for side, threads in cpu[label].items()
            },
            "served_latency_p50_ms": pct(served_lat, 50),
            "added_latency_p50_ms": pct(served_lat, 50) - pct(lim_lat, 50),
            # Each frame's model time taken out on both sides: the model's own time swings most here.
            "added_latency_model_time_out_ms": statistics.median(
                a - b for a, b in zip(served_lat, served_inf, strict=True)
            )
            - statistics.median(a - b for a, b in zip(lim_lat, lim_inf, strict=True)),
        }
    results["client_library"] = _cost_summary(cost)
    if len(variants) > 1:
        results["client_library_B"] = _cost_summary(cost_b)
        a, b = results["variants"]["A"], results["variants"]["B"]
        results["ab"] = {
            "served_over_limit_B_minus_A": b["served_over_limit"] - a["served_over_limit"],
            "overhead_ms_per_frame_B_minus_A": b["overhead_ms_per_frame"] - a["overhead_ms_per_frame"],
            "served_ms_per_frame_B_over_A": b["served_ms_per_frame"] / a["served_ms_per_frame"],
            "added_latency_p50_ms_B_minus_A": b["added_latency_p50_ms"] - a["added_latency_p50_ms"],
        }
    results["profile"] = profile
    results["uptime"] = uptime
    results["wall_s"] = time.perf_counter() - t_start
    shutil.rmtree(tmp, ignore_errors=True)
    print_table(results)
    (args.out / "frame_cost.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / "frame_cost.png")
    log(f"wrote {args.out / 'frame_cost.json'} and {args.out / 'frame_cost.png'}")
    return 0


def _profile(args: argparse.Namespace, daemon: Any, client: ClientProcess, tmp: Path) -> dict:
    """py-spy on the daemon and the client process while the client streams back to back."""
    seconds = args.profile
    log(f"py-spy: {seconds:.0f} s of served frames, daemon pid {daemon.proc.pid}, client pid {client.pid}")
    profilers = {
        "daemon": Profiler(daemon.proc.pid, args.out / "frame_cost.daemon.raw.txt", seconds, args.profile_rate),
        "client": Profiler(client.pid, args.out / "frame_cost.client.raw.txt", seconds, args.profile_rate),
    }
    frames = 0
    t0 = time.perf_counter()
    time.sleep(0.5)  # py-spy attaches
    while time.perf_counter() - t0 < seconds + 1:
        frames += client.ask("throughput", args.chunk)["frames"]
    out = {name: prof.result() for name, prof in profilers.items()}
    gil = Profiler(daemon.proc.pid, args.out / "frame_cost.daemon.gil.raw.txt", seconds, args.profile_rate, gil=True)
    t0 = time.perf_counter()
    time.sleep(0.5)
    while time.perf_counter() - t0 < seconds + 1:
        frames += client.ask("throughput", args.chunk)["frames"]
    out["daemon GIL holder"] = gil.result()
    out["served_frames"] = frames
    out["commands"] = [" ".join(p.cmd) for p in (*profilers.values(), gil)]
    return out


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
