"""The gpu profile on a real GPU, checked in one run: the plan, the memory model against the measured peak, smaller
cards simulated by capping the memory, end-to-end images/s against the training step alone, every notebook in the
gpu profile, and the test suite.

    python bench/gpu_check.py --out $OUT                        # on the GPU machine, at most 7 minutes
    python bench/gpu_check.py --out $OUT --only notebooks,suite,capped-notebooks --notebooks 05_training,06_evaluation
                                                                # what a first run left (the log names it)
    python bench/gpu_check.py --tiny --out /tmp/gpu-check       # the same stages on a CPU at tiny sizes

Everything runs offline on stand-ins (`prefetch --stand-in`) in a scratch HF_HOME / COURSE_DATA / HOME, so no
download is needed and nothing of the machine's own caches is touched. Each stage runs in its own process under
a time limit; a stage that no longer fits in `--budget` seconds is skipped and named in the log, for an `--only`
run to take up. Written to `--out`: gpu_check.log (all output), gpu_check.json (each stage's numbers),
notebooks.md (per notebook: wall time, GPU memory, the runtime extrapolated to the full dataset) and suite.xml.

The GPU machine's image has torch, transformers, accelerate, peft, timm, pytest(-xdist, -timeout) but not the
notebook runner: bring bench/gpu_wheels.txt as wheels. Here, in the checkout the device tool sends:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl -r bench/gpu_wheels.txt

then on the machine (carry .whl; timeout_s 570), and while it is still warm the second part:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site GPU_CHECK_SCRATCH=/tmp/gpu-check \
      && timeout 540 python3 bench/gpu_check.py --out $OUT --budget 420
    export PYTHONPATH=/tmp/site GPU_CHECK_SCRATCH=/tmp/gpu-check && timeout 400 python3 bench/gpu_check.py \
      --out $OUT --budget 380 --only notebooks,suite,capped-notebooks --notebooks <those the first log skipped>
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_NAMES = ["00_setup", "01_vit_theory", "02_freezing", "03_datasets", "04_augmentation", "05_training",
                  "06_evaluation"]
TRAINING_CALLS = re.compile(r"\b(fit|finetuned|compare_strategies|run_ablation|lr_find|fit_with_trainer)\(")
EVALUATION_CALLS = re.compile(r"\b(predict|accuracy_of|accuracy_by_resolution|compare_tta|robustness_sweep)\(")
FULL_TRAIN_IMAGES = 45_000  # CIFAR-10's training split in the kit (10% of 50,000 is validation)
FULL_TEST_IMAGES = 10_000
# stage: (seconds it may take on the GPU, on a CPU with --tiny)
STAGES = {
    "env": (40, 120), "stand-ins": (90, 120), "memory": (100, 300), "capped": (90, 300),
    "throughput": (120, 300), "notebooks": (300, 1500), "suite": (300, 600), "capped-notebooks": (200, 900),
}
TINY_MODEL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}


LOG: list[Path] = []  # the driver's log file (stages print to their own stdout, which the driver logs)


def log(message: str) -> None:
    print(message, flush=True)
    if LOG:
        with LOG[0].open("a") as file:
            file.write(message + "\n")


# ---------------------------------------------------------------- stages (each runs in its own process)

def stage_env(tiny: bool) -> dict:
    import importlib.util

    import torch
    import transformers

    from helpers import hardware, profiles

    device = hardware.read_device()
    if device.kind == "cuda":
        log(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)
    settings = profiles.follow_device_plan(profiles.resolve("gpu"))
    log(profiles.environment_report(settings))
    plans = {}
    for gigabytes in (24, 16):
        simulated = hardware.Device(device.kind, f"{device.name} capped to {gigabytes} GB", int(gigabytes * 1e9),
                                    device.capability)
        plan = profiles.device_plan(profiles.resolve("gpu"), device=simulated)
        log(str(plan))
        plans[f"{gigabytes} GB"] = {**plan.settings(), "predicted_peak_gib": plan.predicted_peak_bytes / 2**30}
    missing = [name for name in ("papermill", "nbval", "ipykernel", "nbclient", "peft", "onnx", "onnxruntime")
               if importlib.util.find_spec(name) is None]
    if missing:
        log(f"MISSING packages (notebooks or tests that need them will fail): {', '.join(missing)}")
    return {"device": str(device), "torch": torch.__version__, "transformers": transformers.__version__,
            "plan": settings.reason.split("\n")[1:], "simulated": plans, "missing_packages": missing}


def stage_stand_ins(tiny: bool) -> dict:
    from helpers import caches, profiles
    from helpers.course import prefetch

    started = time.perf_counter()
    if tiny:
        prefetch.write_model_stand_in(config={**prefetch.GPU_MODEL_CONFIG, **TINY_MODEL},
                                      processor={**prefetch.GPU_MODEL_PROCESSOR, "size": 32})
        prefetch.write_cifar_stand_in(train_per_class=40, test_per_class=10)
        log("tiny stand-ins written")
    else:
        log("\n".join(prefetch.prefetch_stand_ins()))
    return {"seconds": time.perf_counter() - started,
            "model_mb": caches.folder_bytes(caches.hub_snapshot(profiles.GPU_MODEL)) / 1e6,
            "data_mb": caches.folder_bytes(caches.cifar_folder("cifar10")) / 1e6}


def model_and_images(tiny: bool):
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from helpers import data, train

    config = ViTConfig(**(TINY_MODEL if tiny else {}), num_labels=10)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (512 if tiny else 4096, 3, 32, 32), dtype=torch.uint8)
    spec = data.ImageSpec((config.image_size,) * 2, (0.5,) * 3, (0.5,) * 3)
    return config, lambda: ViTForImageClassification(config), images, spec, train


def measure_peak(tiny: bool, micro: int, precision: str, checkpointing: bool = False) -> dict:
    """One configuration of fit()'s training step: measured peak and saved activations against the memory model."""
    import torch

    from helpers import hardware, profiles

    config, new_model, images, spec, train = model_and_images(tiny)
    model = new_model()
    if checkpointing:
        hardware.enable_gradient_checkpointing(model)
    settings = profiles.resolve("gpu", precision=precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}[precision]
    dataset = train.DeviceImages(images, torch.randint(0, 10, (len(images),)).tolist(), spec, augment=True,
                                 dtype=dtype)
    result = train.measure_training_throughput(model, dataset, settings, batch_size=micro, steps=3, warmup_steps=1,
                                               torch_compile=False)
    shape = hardware.model_shape(config)
    used = train.mixed_precision_for(settings)[0]
    predicted = hardware.training_peak_bytes(shape, micro, used, gradient_checkpointing=checkpointing,
                                             resident_bytes=dataset.images.numel())
    saved = micro * (hardware.activation_bytes_per_image(shape, used, checkpointing)
                     - (hardware.layer_activation_bytes(shape, used) if checkpointing else 0))
    saved += 2 * shape.parameters if used != "no" else 0  # autocast's half-precision weight copies
    row = {"micro_batch": micro, "precision": used, "checkpointing": checkpointing,
           "images_per_second": result.images_per_second, "predicted_peak_mib": predicted / 2**20,
           "measured_peak_mib": result.peak_gpu_mib, "predicted_saved_mib": saved / 2**20,
           "measured_saved_mib": result.saved_for_backward_mib}
    if result.peak_gpu_mib:
        row["peak_ratio"] = row["measured_peak_mib"] / row["predicted_peak_mib"]
    row["saved_ratio"] = row["measured_saved_mib"] / row["predicted_saved_mib"]
    log(json.dumps(row))
    del model, dataset
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return row


def stage_memory(tiny: bool) -> dict:
    runs = [(8, "bf16"), (16, "bf16"), (16, "no"), (16, "bf16", True)] if tiny else [
        (32, "bf16"), (64, "bf16"), (128, "bf16"), (256, "bf16"), (128, "fp16"), (64, "no"), (256, "bf16", True)]
    return {"runs": [measure_peak(tiny, *run) for run in runs]}


def stage_capped(tiny: bool) -> dict:
    """The plan for a card of COURSE_GPU_MEMORY_GB, followed for a few steps (the cap is set before anything else)."""
    from helpers import hardware, profiles

    settings = profiles.follow_device_plan(profiles.resolve("gpu"))
    plan = profiles.device_plan(settings)
    log(str(plan))
    micro = min(settings.batch_size, 16) if tiny else settings.batch_size
    row = {"cap_gb": os.environ.get(hardware.MEMORY_CAP_VARIABLE), **plan.settings(),
           **measure_peak(tiny, micro, settings.precision)}
    if settings.precision == "bf16":  # the T4's path (fp16 autocast with a gradient scaler), at the same size
        row["fp16"] = measure_peak(tiny, micro, "fp16")
    return row


def stage_throughput(tiny: bool) -> dict:
    import torch

    from helpers import data, models, profiles, train

    command = [sys.executable, str(ROOT / "bench" / "gpu_throughput.py"), "--no-compile"]
    bench = subprocess.run(command + (["--tiny"] if tiny else ["--steps", "20", "--budget-s", "80"]),
                           capture_output=True, text=True, cwd=ROOT)
    log(bench.stdout + bench.stderr[-2000:])
    rows = {name: (float(speed.replace(",", "")), float(peak) if peak else None) for name, speed, peak in re.findall(
        r"^(\w+ eager)\s+([\d,.]+) images/s.*?(?:peak\s+([\d.]+) GiB)?", bench.stdout, re.M)}
    step_only = rows["kit eager"][0]
    overrides = {"epochs": 1, **({"train_size": 400, "eval_size": 100, "batch_size": 16} if tiny else {})}
    settings = profiles.follow_device_plan(profiles.resolve("gpu", **overrides), list(overrides))
    splits = data.load_dataset("cifar10", seed=0, train_size=settings.train_size, eval_size=settings.eval_size)
    model, processor = models.load_model(settings.model_name, splits.classes)
    spec = data.ImageSpec.from_processor(processor)
    result = {"train_step_only_images_per_second": step_only, "bench_rows": rows,
              "settings": settings.reason.split("\n")[1:]}
    for label, inputs in (("device", train.fit_inputs(splits, spec, settings)),
                          ("workers", train.fit_inputs(splits, spec, settings, device=models_cpu_device()))):
        if label == "workers":  # a tenth of the data is enough to time the CPU pipeline
            inputs.train = inputs.train.subset(range(len(inputs.train) // 10))
        log(str(inputs))
        started = time.perf_counter()
        history = train.fit(model, inputs.train, inputs.val, settings, progress=False)
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        seconds = time.perf_counter() - started
        result[f"{label}_fit_epoch_images_per_second"] = len(inputs.train) / seconds
        result[f"{label}_epoch_seconds"] = history.rows[0]["seconds"]
        log(f"fit() one epoch, {label} input path: {len(inputs.train):,} images in {seconds:.1f} s = "
            f"{len(inputs.train) / seconds:,.0f} images/s (validation of {len(inputs.val):,} included)")
    result["device_path_over_step_only"] = result["device_fit_epoch_images_per_second"] / step_only
    log(f"end-to-end over training step alone: {result['device_path_over_step_only']:.2f}x (goal >= 0.9)")
    return result


def models_cpu_device():
    """A device description that keeps images off the GPU, so `fit_inputs` takes the worker pipeline."""
    from helpers import hardware

    device = hardware.read_device()
    return hardware.Device(device.kind, device.name, 1, device.capability) if device.kind == "cuda" else device


def gpu_memory_sampler(samples: list) -> threading.Event:
    """Sample the GPU's used memory (nvidia-smi) every half second until the returned event is set."""
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                samples.append(float(out.stdout.split()[0]))
            stop.wait(0.5)

    if subprocess.run(["which", "nvidia-smi"], capture_output=True).returncode == 0:
        threading.Thread(target=sample, daemon=True).start()
    return stop


def stage_notebook(tiny: bool) -> dict:
    """One notebook (NOTEBOOK in the environment) in the gpu profile on a subset: wall time, GPU memory, and the
    full run extrapolated from the cells' own times (training cells scaled to 45,000 images, evaluation cells to
    10,000)."""
    import nbformat
    import torch

    from helpers import course, hardware

    name = os.environ["NOTEBOOK"]
    train_size, eval_size = (200, 100) if tiny else (1024, 256)
    overrides = {"train_size": train_size, "eval_size": eval_size, **({"epochs": 1, "batch_size": 64} if tiny else {})}
    output = Path(os.environ["SCRATCH"]) / "notebooks" / f"{name}.ipynb"
    samples: list[float] = []
    stop = gpu_memory_sampler(samples)
    result = course.execute(ROOT / "notebooks" / f"{name}.ipynb", output, {"profile": "gpu", "overrides": overrides})
    stop.set()
    cells = nbformat.read(output, as_version=4).cells if output.exists() else []
    timed = []  # (seconds on the subset, factor to the full run)
    for cell in cells:
        factor = 1.0
        if TRAINING_CALLS.search(cell.source):
            factor = FULL_TRAIN_IMAGES / train_size * (3 if tiny else 1)  # tiny runs 1 epoch of the profile's 3
        elif EVALUATION_CALLS.search(cell.source):
            factor = FULL_TEST_IMAGES / eval_size
        timed.append((cell.metadata.get("papermill", {}).get("duration") or 0.0, factor))
    outside_cells = result.seconds - sum(seconds for seconds, _ in timed)  # the kernel's start, papermill
    full_run = outside_cells + sum(seconds * factor for seconds, factor in timed)
    row = {"notebook": name, "ok": result.ok, "error": result.error, "seconds": result.seconds,
           "full_run_estimate_minutes": full_run / 60,
           "gpu_memory_peak_mib": max(samples) if samples else None, "device": str(hardware.read_device()),
           "torch": torch.__version__, "overrides": overrides, "records": result.records}
    log(json.dumps(row, default=str))
    return row


def stage_suite(tiny: bool, out: Path) -> dict:
    workers = max(1, min(14, (os.cpu_count() or 2) - 2))
    paths = ["tests/test_hardware.py", "tests/test_prefetch.py", "tests/test_profiles.py"] if tiny else [
        "tests", "notebooks"]
    command = [sys.executable, "-m", "pytest", *paths, "--nbval-lax", "-n", str(workers), "--dist", "loadfile",
               "-q", "--durations=15", f"--junitxml={out / 'suite.xml'}", "-p", "no:cacheprovider"]
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "COURSE_PROFILE": "smoke", "COURSE_HEADLESS": "1"})
    log(finished.stdout[-12000:] + finished.stderr[-3000:])
    return {"returncode": finished.returncode, "seconds": time.perf_counter() - started, "workers": workers,
            "summary": finished.stdout.strip().splitlines()[-1] if finished.stdout.strip() else ""}


# ---------------------------------------------------------------- the driver

def run_stage(name: str, args, environment: dict, limit: float, extra: dict | None = None) -> dict:
    """Run one stage in its own process, at most `limit` seconds; its result, or why it has none."""
    command = [sys.executable, __file__, "--stage", name, "--out", str(args.out)] + (["--tiny"] if args.tiny else [])
    started = time.perf_counter()
    try:
        finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit,
                                  env={**environment, **(extra or {})})
        output, code = finished.stdout + finished.stderr, finished.returncode
    except subprocess.TimeoutExpired as expired:
        output, code = f"{expired.stdout or ''}{expired.stderr or ''}\nTIMED OUT after {limit:.0f} s", "timeout"
    output = output if isinstance(output, str) else output.decode(errors="replace")
    log(output.rstrip())
    found = re.findall(r"^RESULT (.*)$", output, re.M)
    result = json.loads(found[-1]) if found else {"failed": code, "tail": output[-1500:]}
    result["stage_seconds"] = time.perf_counter() - started
    return result


def notebook_table(rows: list[dict]) -> str:
    rows = [row for row in rows if "notebook" in row]
    if not rows:
        return "(no notebook ran)"
    first = rows[0]
    lines = [f"gpu profile on {first['device']}, torch {first['torch']}, overrides {first['overrides']}; the full "
             "run is extrapolated from the subset (training cells x 45,000 / train_size, evaluation cells x "
             "10,000 / eval_size), GPU memory as nvidia-smi reports it (CUDA context included).", "",
             "| notebook | ok | wall time (subset) | full run (extrapolated) | GPU memory peak | memory cap |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        memory = f"{row['gpu_memory_peak_mib'] / 1024:.1f} GiB" if row.get("gpu_memory_peak_mib") else "-"
        lines.append(f"| {row['notebook']} | {'yes' if row['ok'] else 'NO: ' + row['error'][:300]} | "
                     f"{row['seconds']:.0f} s | {row['full_run_estimate_minutes']:.1f} min | {memory} | "
                     f"{row.get('COURSE_GPU_MEMORY_GB', '-')} |")
    return "\n".join(lines)


def heaviest_notebooks(results: dict) -> list[str]:
    rows = [r for r in results.get("notebooks", []) if r.get("gpu_memory_peak_mib")]
    ranked = sorted(rows, key=lambda r: -r["gpu_memory_peak_mib"])
    return [r["notebook"] for r in ranked[:2]] or ["05_training", "02_freezing"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "build/gpu-check")))
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for a CPU")
    parser.add_argument("--only", default="", help=f"comma-separated stages of {', '.join(STAGES)}")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 420; tiny 3000)")
    parser.add_argument("--notebooks", default=",".join(NOTEBOOK_NAMES), help="the notebooks stage runs these")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage:  # inside a stage's own process
        functions = {"env": stage_env, "stand-ins": stage_stand_ins, "memory": stage_memory,
                     "capped": stage_capped, "throughput": stage_throughput, "notebook": stage_notebook}
        result = stage_suite(args.tiny, args.out) if args.stage == "suite" else functions[args.stage](args.tiny)
        print("RESULT " + json.dumps(result, default=str), flush=True)
        return 0

    scratch = Path(os.environ.get("GPU_CHECK_SCRATCH") or tempfile.mkdtemp(prefix="gpu-check-"))
    (scratch / "home").mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "HF_HOME": str(scratch / "hf"), "COURSE_DATA": str(scratch / "data"),
                   "HOME": str(scratch / "home"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                   "SCRATCH": str(scratch), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                          os.environ.get("PYTHONPATH")]))}
    budget = args.budget or (3000 if args.tiny else 420)
    deadline = time.perf_counter() + budget
    chosen = [s for s in STAGES if not args.only or s in args.only.split(",")]
    results_path = args.out / "gpu_check.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if "stand-ins" not in chosen and not (scratch / "data").exists():  # the later stages need them
        chosen.insert(1 if chosen and chosen[0] == "env" else 0, "stand-ins")
    LOG.append(args.out / "gpu_check.log")
    log(f"gpu_check {' '.join(sys.argv[1:])}: stages {', '.join(chosen)}, budget {budget:.0f} s")
    for stage in chosen:
        limit = STAGES[stage][1 if args.tiny else 0]
        left = deadline - time.perf_counter()
        if left < min(limit, 60):
            log(f"\n=== {stage}: SKIPPED, {left:.0f} s left of the budget; rerun with --only {stage}")
            results[stage] = {"skipped": "out of time"}
            continue
        log(f"\n=== {stage} (at most {min(limit, left):.0f} s)")
        if stage == "capped":
            results[stage] = [run_stage("capped", args, environment, min(limit, left) / 2,
                                        {"COURSE_GPU_MEMORY_GB": str(gb)}) for gb in (24, 16)]
        elif stage in ("notebooks", "capped-notebooks"):
            runs = ([(name, {}) for name in args.notebooks.split(",")] if stage == "notebooks" else
                    [(name, {"COURSE_GPU_MEMORY_GB": str(gb)}) for gb in (24, 16)
                     for name in heaviest_notebooks(results)])
            results[stage] = []
            for name, extra in runs:
                left = deadline - time.perf_counter()
                if left < 45:
                    log(f"{name} {extra}: SKIPPED, out of time; rerun with --only {stage}"
                        + (f" --notebooks {name}" if stage == "notebooks" else ""))
                    continue
                row = run_stage("notebook", args, environment, min(limit / 2, left), {"NOTEBOOK": name, **extra})
                results[stage].append({**row, **extra})
            table = notebook_table(results[stage])
            (args.out / "notebooks.md").open("a").write(f"\n## {stage}\n\n{table}\n")
            log(table)
        else:
            results[stage] = run_stage(stage, args, environment, min(limit, left))
        results_path.write_text(json.dumps(results, indent=1, default=str))
    log(f"\nresults in {results_path}; scratch caches in {scratch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
