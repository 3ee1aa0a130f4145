"""One command for a GPU machine with a short time budget: the bundled-model candidate, then GPU throughput.

Everything runs from one command under a deadline (``--budget-s``), each stage in its own subprocess
with its own timeout, and ``results.json`` in ``--out`` is rewritten after every stage (what finished
survives a later failure):

1. environment: torch, the GPU, ``nvidia-smi``;
2. the bundled-model candidate (preset ``imagenette_gpu``, ``dinofeat-train``) on the downscaled
   Imagenette copied beside the checkout, in the time left minus what stages 3 and 4 keep back: 20 calibration
   iterations with each data path pick the faster one and the number of epochs that fits; should that
   be too many, the run gets SIGTERM at its deadline (it then stops with a checkpoint); the teacher is
   exported with ``--half`` into ``--out/model``;
3. ``embed()`` throughput of a ViT-S/16 (random weights) on device-resident 224-px batches, fp32 and
   bf16;
4. the full training step of ViT-S/16 at 224 with 2 + 10 crops in bf16 through
   ``bench/bench_train.py`` on generated 500x375 JPEGs: the PIL path with 14 loader workers, the device
   data path, and the step alone (``--prefetched``).

The 20-NN of the exported model is measured afterwards on this machine, where faiss and the full-size
validation split are (docs/training.md, "Training the bundled model on a GPU").

Usage, on the GPU machine (from the repository root, the checkout installed without its dependencies as
docs/training.md shows; ``$OUT`` is the folder whose files come back):
    python3 bench/gpu_session.py --data .gpu/imagenette_train_128 --out "$OUT" --budget-s 540
Rehearsal on a CPU (tiny networks and sizes, the same stages and code paths):
    python bench/gpu_session.py --data .gpu/imagenette_train_128 --out /tmp/out --rehearse --budget-s 240
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dinofeat.data.files import list_image_files
from dinofeat.training.config.train_config import resolve_config
from dinofeat.training.engine.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
PRESET = "imagenette_gpu"
CALIBRATION_ITERS = 20
EXPORT_RESERVE_S = 45  # SIGTERM -> checkpoint -> exit, then the export
# Seconds kept back for the throughput stages while the candidate trains (by rehearsal or not).
THROUGHPUT_S = {False: {"embed": 40, "step": 140}, True: {"embed": 15, "step": 40}}
# ViT-S/16, the official per-GPU batch, 2 x 224 + 10 x 96 crops, bf16.
STEP_BENCH = ["model.arch=vit_small", "optim.batch_size_per_gpu=64", "crops.local_crops_number=10",
              "head.out_dim=65536", "run.precision=bf16", "run.device=cuda", "data.num_workers=14"]
# The rehearsal: the same stages on a CPU with networks and crops small enough for seconds per stage.
TINY_ARCH = '{"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2, "img_size": 32}'
TINY_RUN = [f"model.arch={TINY_ARCH}", "crops.global_size=32", "crops.local_size=16", "head.out_dim=256",
            "run.precision=bf16", "run.device=cpu", "data.num_workers=1"]
REHEARSAL_STEP_BENCH = [*TINY_RUN, "optim.batch_size_per_gpu=8"]
REHEARSAL_TRAIN = [*TINY_RUN, "optim.batch_size_per_gpu=16", "crops.local_crops_number=2",
                   "head.hidden_dim=64", "head.bottleneck_dim=32"]


class Session:
    """Results of the stages, the deadline, and the subprocess runner."""

    def __init__(self, out: Path, budget_s: float, rehearse: bool) -> None:
        self.out, self.rehearse = out, rehearse
        self.deadline = time.monotonic() + budget_s
        self.results: dict[str, Any] = {"rehearsal": rehearse, "budget_s": budget_s}
        out.mkdir(parents=True, exist_ok=True)
        # Runs and checkpoints stay out of ``out`` (it comes back); subprocesses start here, so that the
        # installed package, not the source tree in the working directory, is what they import.
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu_session_"))

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, stage: str, value: Any) -> None:
        self.results[stage] = value
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2) + "\n")
        print(f"[gpu_session] {stage}: {json.dumps(value)[:400]}", flush=True)

    def run(self, name: str, command: list[str], timeout: float, *, graceful: bool = False
            ) -> subprocess.CompletedProcess[str] | None:
        """Run ``command``, its output logged to ``out/<name>.log``; None when it failed or timed out.

        ``graceful``: at the timeout send SIGTERM and wait for the process to stop on its own (the
        trainer then writes its checkpoint) before killing it.
        """
        log = self.out / f"{name}.log"
        start = time.monotonic()
        with log.open("w") as handle:
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, text=True,
                                       cwd=self.scratch)
            try:
                process.wait(timeout=max(timeout, 1.0))
            except subprocess.TimeoutExpired:
                if graceful:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(timeout=EXPORT_RESERVE_S / 2)
                    except subprocess.TimeoutExpired:
                        process.kill()
                else:
                    process.kill()
                process.wait()
        elapsed = round(time.monotonic() - start, 1)
        tail = log.read_text()[-2000:]
        if process.returncode != 0:
            self.record(f"{name}_failed", {"returncode": process.returncode, "seconds": elapsed,
                                           "tail": tail})
            return None
        return subprocess.CompletedProcess(command, 0, log.read_text(), "")


def _json_tail(text: str) -> Any:
    return json.loads(text[text.index("{"):text.rindex("}") + 1])


def environment(session: Session) -> None:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                            "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,clocks.max.sm",
                                  "--format=csv"], capture_output=True, text=True, check=False)
            info["nvidia_smi"] = smi.stdout.strip()
        except OSError as error:
            info["nvidia_smi"] = str(error)
    session.record("environment", info)


EMBED_SNIPPET = """
import json, sys, time, torch, dinofeat
device, batch, size, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
arch = json.loads(sys.argv[5]) if sys.argv[5].startswith("{") else sys.argv[5]
out = {}
for dtype in (torch.float32, torch.bfloat16):
    model = dinofeat.load(arch, pretrained=False, device=device, dtype=dtype)
    images = torch.randn(batch, 3, size, size, device=device)
    for _ in range(2):
        model.embed(images, batch_size=batch, progress=False)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.embed(images, batch_size=batch, progress=False)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times.sort()
    out[str(dtype).removeprefix("torch.")] = {"images_per_s": round(batch / times[len(times) // 2], 1),
                                             "batch": batch, "size": size}
print(json.dumps(out))
"""


def embed_throughput(session: Session) -> None:
    device, batch, size, repeats = ("cpu", 4, 64, 3) if session.rehearse else ("cuda", 256, 224, 10)
    arch = TINY_ARCH if session.rehearse else "vit_s16"
    reserve = THROUGHPUT_S[session.rehearse]["step"]
    done = session.run("embed", [sys.executable, "-c", EMBED_SNIPPET, device, str(batch), str(size),
                                 str(repeats), arch], timeout=max(session.left() - reserve, 10))
    if done is not None:
        session.record("embed_vit_s16" if not session.rehearse else "embed_tiny", _json_tail(done.stdout))


def _generated_image(path: Path) -> None:
    # A smooth random colour field at ImageNet's typical size: it decodes and compresses like a photo.
    rng = np.random.default_rng(int(path.stem))
    small = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8))
    small.resize((500, 375), Image.Resampling.BICUBIC).save(path, quality=90)


def step_throughput(session: Session) -> None:
    overrides = REHEARSAL_STEP_BENCH if session.rehearse else STEP_BENCH
    # With workers, enough batches that 14 of them reach their steady rate (each starts with 2 batches
    # prefetched); alone, the batches are made in the benchmark's process first, one core, so fewer.
    iters = {"pil_workers": 40, "device_augmentation": 40, "step_alone": 12}
    if session.rehearse:
        iters = dict.fromkeys(iters, 8)
    batch = resolve_config(overrides=overrides).optim.batch_size_per_gpu
    images = session.scratch / "step_images"
    images.mkdir()
    with multiprocessing.Pool() as pool:
        pool.map(_generated_image, [images / f"{i:05d}.jpg" for i in range(max(iters.values()) * batch)])
    variants = {"pil_workers": [], "device_augmentation": ["--set", "data.augmentation=device"],
                "step_alone": ["--prefetched"]}
    figures = {}
    for position, (name, extra) in enumerate(variants.items()):
        share = session.left() / (len(variants) - position)
        command = [sys.executable, str(ROOT / "bench" / "bench_train.py"), "--iters", str(iters[name]),
                   "--no-ceiling", "--images", str(images), *extra]
        for item in overrides:
            command += ["--set", item]
        done = session.run(f"step_{name}", command, timeout=min(120, share))
        if done is not None:
            result = _json_tail(done.stdout)
            figures[name] = {key: result[key] for key in ("images_per_s", "median_s_per_iter",
                                                          "median_data_wait_s")}
    session.record("train_step_vit_s16_bf16_2x224_10x96" if not session.rehearse else "train_step_tiny",
                   figures)


def _iteration_seconds(output_dir: Path) -> float:
    # The first iterations warm up.
    times = sorted(r["iter_time"] for r in read_metrics(output_dir) if "iter_time" in r)[2:]
    return float(times[len(times) // 2])


def train_candidate(session: Session, data: Path, reserve_s: float) -> None:
    """Calibrate, train and export the candidate, leaving ``reserve_s`` seconds for the stages after it."""
    def left() -> float:
        return session.left() - reserve_s

    overrides = REHEARSAL_TRAIN if session.rehearse else []
    base = ["-m", "dinofeat.training", "train", "--preset", PRESET, "--data", str(data),
            *[item for entry in overrides for item in ("--set", entry)]]
    calibration = {}
    for mode in ("cpu", "device"):
        run_dir = session.scratch / f"calibrate_{mode}"
        command = [sys.executable, *base, "--output-dir", str(run_dir), "--set", "run.epochs=1",
                   "--set", f"run.max_iters_per_epoch={CALIBRATION_ITERS}",
                   "--set", f"data.augmentation={mode}", "--set", "run.resume=null",
                   "--set", "optim.warmup_epochs=0"]  # a warm-up may not outlast the run
        if session.run(f"calibrate_{mode}", command, timeout=min(90, left() / 4)) is not None:
            calibration[mode] = _iteration_seconds(run_dir)
    if not calibration:
        return
    mode = min(calibration, key=calibration.__getitem__)
    preset = resolve_config(preset=PRESET, overrides=overrides)
    batch = preset.optim.batch_size_per_gpu
    iters_per_epoch = len(list_image_files(data)) // batch
    epoch_s = iters_per_epoch * calibration[mode] * 1.1 + 1.0  # + loader turn-over, checkpoint (0.2 s)
    epochs = max(1, int((left() - EXPORT_RESERVE_S - 15) / epoch_s))  # 15 s: start-up
    # The preset's warm-up is a tenth of its 100 epochs; a shorter run keeps that share.
    warmup = min(preset.optim.warmup_epochs, epochs // 10)
    session.record("candidate_plan", {"iteration_s": calibration, "augmentation": mode,
                                      "iters_per_epoch": iters_per_epoch,
                                      "estimated_epoch_s": round(epoch_s, 2), "epochs": epochs,
                                      "warmup_epochs": warmup})
    run_dir = session.scratch / "candidate"
    command = [sys.executable, *base, "--output-dir", str(run_dir), "--set", f"run.epochs={epochs}",
               "--set", f"optim.freeze_last_layer={epochs}", "--set", f"optim.warmup_epochs={warmup}",
               "--set", f"data.augmentation={mode}"]
    start = time.monotonic()
    session.run("candidate_train", command, timeout=left() - EXPORT_RESERVE_S, graceful=True)
    if not (run_dir / "checkpoint.pth").is_file():
        return  # candidate_train_failed holds its log's tail
    records = read_metrics(run_dir)
    summaries = [r["epoch_summary"] for r in records if "epoch_summary" in r]
    session.record("candidate_training", {
        "seconds": round(time.monotonic() - start, 1), "epochs_done": len(summaries),
        "epochs_planned": epochs,
        "stopped_by": next((r["preempted"]["by"] for r in records if "preempted" in r), None),
        "loss_per_epoch": [round(s["loss"], 4) for s in summaries],
        "images_per_s_per_epoch": [round(s["images_per_s"], 1) for s in summaries],
    })
    export = session.run("candidate_export", [sys.executable, "-m", "dinofeat.training", "export",
                                              str(run_dir / "checkpoint.pth"), str(session.out / "model"),
                                              "--name", "vit_t8_imagenette", "--half"],
                         timeout=max(left() + reserve_s / 2, 20))
    if export is not None:
        (session.out / "candidate_metrics.jsonl").write_bytes((run_dir / "metrics.jsonl").read_bytes())
        session.record("candidate_export", {"folder": "model", "bytes": sum(
            p.stat().st_size for p in (session.out / "model").iterdir())})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the downscaled training images")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=540,
                        help="seconds until everything must be written")
    parser.add_argument("--rehearse", action="store_true", help="tiny sizes on the CPU, same stages")
    parser.add_argument("--skip", nargs="*", default=[], choices=("embed", "step", "candidate"))
    args = parser.parse_args()
    args.data, args.out = args.data.resolve(), args.out.resolve()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} is not a folder: make it with bench/make_small_imagenette.py")
    session = Session(args.out, args.budget_s, args.rehearse)
    environment(session)
    # The candidate first (the device time's first use), with the throughput stages' time kept back.
    if "candidate" not in args.skip:
        kept = THROUGHPUT_S[session.rehearse]
        reserve = sum(kept[stage] for stage in ("embed", "step") if stage not in args.skip)
        train_candidate(session, args.data, reserve)
    if "embed" not in args.skip:
        embed_throughput(session)
    if "step" not in args.skip:
        step_throughput(session)
    shutil.rmtree(session.scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
