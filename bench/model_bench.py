"""Model benchmarks: SaG against CLIPSeg and GroupViT, re-prompt latency, training throughput, memory.

Everything uses random weights with the released models' shapes (no downloads):

* SaG at the paper configuration: ViT-S/16 at 384 + a bert-base-uncased-shaped text encoder, D=512, K=36, T=6;
* CLIPSeg configured like the released ``CIDAS/clipseg-rd64-refined``: CLIP ViT-B/16 at 352, reduce_dim 64,
  complex transposed convolution (the library default is ViT-B/32, which would flatter it);
* GroupViT configured like ``nvidia/groupvit-gcc-yfcc`` (its library default), at 224.

Prints tables and writes JSON (and a PNG plot of pairs/s against batch size) to ``bench/results/``. Ratios are taken
within one run; absolute numbers on a shared 2-core machine are noisy.

    python bench/model_bench.py                      # CPU defaults
    python bench/model_bench.py --device cuda --precision bf16 --batch-sizes 1,8,32,64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from sag import SaG, autocast, paper_config
from sag.device import resolve_device, resolve_precision
from sag.inference import combine_attention
from sag.text_encoder import minilm_path

RESULTS = Path(__file__).resolve().parent / "results"
EXPRESSIONS = [
    "the man on the left holding a guitar",
    "woman in red shirt",
    "the dog next to the bicycle",
    "second chair from the right",
]


# ---- models -------------------------------------------------------------------------------------------------------
def bert_base_shaped_dir() -> Path:
    """A local model directory with bert-base-uncased's shape (config defaults) and its vocabulary.

    MiniLM ships the same uncased WordPiece vocabulary as bert-base-uncased, so token counts match the paper's model.
    """
    from transformers import AutoTokenizer, BertConfig

    directory = Path(tempfile.mkdtemp(prefix="sag-bench-bert-"))
    BertConfig().save_pretrained(directory)  # 12 layers, hidden 768: bert-base
    AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True).save_pretrained(directory)
    return directory


def build_sag(device: torch.device) -> tuple[SaG, Path]:
    text_dir = bert_base_shaped_dir()
    model = SaG(paper_config(text_backbone=str(text_dir)), pretrained=False)
    return model.to(device).eval(), text_dir


def build_clipseg(device: torch.device):
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    config = CLIPSegConfig(
        vision_config={"patch_size": 16, "image_size": 352},
        reduce_dim=64,
        use_complex_transposed_convolution=True,
        extract_layers=[3, 6, 9],
    )
    return CLIPSegForImageSegmentation(config).to(device).eval(), 352


def build_groupvit(device: torch.device):
    from transformers import GroupViTConfig, GroupViTModel

    config = GroupViTConfig()
    return GroupViTModel(config).to(device).eval(), config.vision_config.image_size


# ---- timing -------------------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds (CUDA synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def token_batch(model: SaG, batch: int) -> dict[str, torch.Tensor]:
    texts = [EXPRESSIONS[i % len(EXPRESSIONS)] for i in range(batch)]
    return model.tokenize(texts)


def sag_pairs(model: SaG, pixels: torch.Tensor, tokens: dict) -> torch.Tensor:
    """Image + text -> patch scores, i.e. everything but resizing to each original image size."""
    image = model.encode_image(pixels)
    text = model.encode_text(**tokens)
    fused = model.fuse(image.entities, text)
    return combine_attention(image.slot_attn, fused.fuse_attn)


def forward_throughput(args, device, models) -> list[dict]:
    sag_model, clipseg, clipseg_size, groupvit, groupvit_size = models
    rows = []
    ctx = lambda: autocast(device, args.precision)  # noqa: E731
    for batch in args.batch_sizes:
        tokens = token_batch(sag_model, batch)
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        peer_ids = ids.clamp(max=49407)  # any in-vocabulary ids: the cost depends only on the shape
        cases = {
            "SaG (ViT-S/16@384 + BERT-base)": lambda: sag_pairs(
                sag_model, torch.randn(batch, 3, 384, 384, device=device), tokens),
            "CLIPSeg rd64-refined (ViT-B/16@352)": lambda: clipseg(
                input_ids=peer_ids, attention_mask=mask,
                pixel_values=torch.randn(batch, 3, clipseg_size, clipseg_size, device=device)),
            "GroupViT gcc-yfcc (@224)": lambda: groupvit(
                input_ids=peer_ids, attention_mask=mask, output_segmentation=True,
                pixel_values=torch.randn(batch, 3, groupvit_size, groupvit_size, device=device)),
        }
        for name, fn in cases.items():
            def run(fn=fn):
                with torch.inference_mode(), ctx():
                    return fn()
            # The very first calls also pick oneDNN / cuDNN kernels and fill allocator pools: warm up longer.
            seconds = timed(run, device, args.repeats, warmup=3 if batch == args.batch_sizes[0] else 1)
            rows.append({"model": name, "batch": batch, "seconds": seconds, "pairs_per_s": batch / seconds})
            print(f"  {name:38s} batch {batch:3d}: {batch / seconds:9.2f} pairs/s", flush=True)
    return rows


def reprompt_latency(args, device, model: SaG) -> dict:
    """One new text on an image whose entities are cached, against a full forward and the text encoder alone."""
    pixels = torch.randn(1, 3, 384, 384, device=device)
    tokens = token_batch(model, 1)
    with torch.inference_mode(), autocast(device, args.precision):
        cached = model.encode_image(pixels)

    def full():
        return sag_pairs(model, pixels, tokens)

    def reprompt():
        text = model.encode_text(**tokens)
        return combine_attention(cached.slot_attn, model.fuse(cached.entities, text).fuse_attn)

    def text_only():
        return model.encode_text(**tokens)

    result = {}
    for name, fn in (("full_forward", full), ("reprompt_cached", reprompt), ("text_encoder_only", text_only)):
        def run(fn=fn):
            with torch.inference_mode(), autocast(device, args.precision):
                return fn()
        result[f"{name}_ms"] = 1000 * timed(run, device, args.latency_repeats, warmup=3)
    result["reprompt_over_text_encoder"] = result["reprompt_cached_ms"] / result["text_encoder_only_ms"]
    result["full_over_reprompt"] = result["full_forward_ms"] / result["reprompt_cached_ms"]
    return result


# Texts without spatial words (a cue such as "on the left" sends one more text through fusion and refinement).
REPROMPT_TEXTS = ["woman in red shirt", "the astronaut's white helmet", "a brown dog with a red collar",
                  "the cup of coffee", "the striped cat's face", "the rocket"]


class _OneFile:
    """The backend's image fetcher interface, handing out one encoded image for every URL."""

    def __init__(self, data: bytes):
        self.data = data

    def fetch(self, url: str, task_id: int | None) -> bytes:
        return self.data


def photo_jpeg(width: int, height: int) -> bytes:
    """scikit-image's astronaut resized to ``width`` x ``height``, as a JPEG (quality 90)."""
    import io

    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((width, height), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def backend_reprompt(args, device, model: SaG, name: str, sizes: list[tuple[int, int]]) -> list[dict]:
    """A new text on an image in the backend's entity cache, as a sag-worker runs it: ``Predictor.predict`` of one
    task (cache lookup, text encoder, fusion, the mask at the image's size refined along its edges with the default
    ``SAG_MASK_REFINE=guided``, spatial words, brush RLE). Against the text encoder alone (tokenizer included), and
    against the same hit that decodes the file again for the refinement (what a hit did before the cache kept the
    pixels); rounds alternate the three, each with a new text. Per image size (W, H) of a JPEG."""
    import dataclasses
    import hashlib

    from backend.images import decode_image
    from backend.predictor import OutputSpec, Predictor, TaskInput
    from backend.settings import Settings
    from training.registry import Registry

    directory = Path(tempfile.mkdtemp(prefix="sag-bench-registry-"))
    spec = OutputSpec("image", brush="mask")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    try:
        registry = Registry(directory)
        registry.promote(registry.add(model, {"preset": name, "trained": False}).id)
        settings = Settings.from_env({}, model_dir=str(directory), device=str(device), precision=args.precision)
        for width, height in sizes:
            jpeg = photo_jpeg(width, height)
            predictor = Predictor(settings, Registry(directory), _OneFile(jpeg))
            predictor.predict([TaskInput(0, "bench://photo.jpg", ("warm-up",), ("Object",))], spec)  # a miss
            key = (hashlib.sha256(jpeg).hexdigest(), predictor.version)
            kept = predictor.cache.get(key)
            assert kept is not None and kept.guide is not None, "the cache did not keep the image's pixels"
            without = dataclasses.replace(kept, guide=None)
            served = predictor.model

            def text_only(text: str) -> None:
                with torch.inference_mode(), autocast(device, settings.precision):
                    served.encode_text(**served.tokenize([text]))

            def hit(text: str, pixels_kept: bool) -> None:
                predictor.cache.put(key, kept if pixels_kept else without)
                [answer] = predictor.predict([TaskInput(1, "bench://photo.jpg", (text,), ("Object",))], spec)
                assert "result" in answer, answer

            cases = {"text_encoder_only": text_only, "cache_hit": lambda t: hit(t, True),
                     "cache_hit_decoding_again": lambda t: hit(t, False),
                     "decode_only": lambda t: decode_image(jpeg, settings.max_image_pixels)}
            times: dict[str, list[float]] = {case: [] for case in cases}
            for i in range(args.latency_repeats * 2 + 3):
                text = f"{REPROMPT_TEXTS[i % len(REPROMPT_TEXTS)]} {i}"
                for case, fn in cases.items():
                    sync()
                    start = time.perf_counter()
                    fn(text)
                    sync()
                    if i >= 3:  # warm-up rounds
                        times[case].append(time.perf_counter() - start)
            row = {"model": name, "image": f"{width}x{height}", "repeats": len(times["cache_hit"]),
                   **{f"{case}_ms": 1000 * statistics.median(v) for case, v in times.items()}}
            row["cache_hit_over_text_encoder"] = row["cache_hit_ms"] / row["text_encoder_only_ms"]
            row["decoding_again_over_text_encoder"] = row["cache_hit_decoding_again_ms"] / row["text_encoder_only_ms"]
            rows.append(row)
            print(f"  {name} @ {width}x{height}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()
                                                               if isinstance(v, float)), flush=True)
            predictor = served = None  # frees this size's model (not `del`: the closures above name both)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return rows


def training_throughput(args, device, model: SaG) -> dict:
    """Pairs/s of one optimisation step, and the batched B x B fusion against a per-pair Python loop."""
    model.train()
    batch = args.train_batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    pixels = torch.randn(batch, 3, 384, 384, device=device)
    tokens = token_batch(model, batch)
    scaler_ctx = lambda: autocast(device, args.precision)  # noqa: E731

    def step():
        with scaler_ctx():
            out = model(pixels, **tokens)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    step_s = timed(step, device, args.train_repeats)

    fusion_b = args.fusion_batch
    entities = torch.randn(fusion_b, model.config.num_slots, model.config.embed_dim, device=device, requires_grad=True)
    text = torch.randn(fusion_b, model.config.embed_dim, device=device, requires_grad=True)

    def batched():
        with scaler_ctx():
            z = model.fuse(entities, text, all_pairs=True).z
        z.float().sum().backward()

    def loop():
        with scaler_ctx():
            z = torch.stack([
                torch.stack([model.fuse(entities[i:i + 1], text[t:t + 1]).z[0] for i in range(fusion_b)])
                for t in range(fusion_b)
            ])
        z.float().sum().backward()

    batched_s = timed(batched, device, args.train_repeats)
    loop_s = timed(loop, device, max(1, args.train_repeats // 2))
    model.eval()
    return {
        "train_batch": batch, "step_seconds": step_s, "train_pairs_per_s": batch / step_s,
        "fusion_batch": fusion_b, "fusion_batched_ms": 1000 * batched_s, "fusion_loop_ms": 1000 * loop_s,
        "fusion_loop_over_batched": loop_s / batched_s,
    }


# ---- memory (one subprocess per probe, so peak RSS belongs to that probe alone) -----------------------------------
def peak_rss_mib() -> float:
    """This process's peak resident set size. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent
    across fork + exec, so a probe started by a big parent would report the parent's peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # non-Linux fallback


def memory_probe(kind: str, batch: int, device: torch.device, precision: str) -> dict:
    model, text_dir = build_sag(device)
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        pixels = torch.randn(batch, 3, 384, 384, device=device)
        tokens = token_batch(model, batch)
        if kind == "inference":
            with torch.inference_mode(), autocast(device, precision):
                sag_pairs(model, pixels, tokens)
        else:
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
            with autocast(device, precision):
                out = model(pixels, **tokens)
            out.loss.backward()
            optimizer.step()
        result = {"kind": kind, "batch": batch, "peak_rss_mib": peak_rss_mib()}
        if device.type == "cuda":
            torch.cuda.synchronize()
            result["peak_gpu_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return result
    finally:
        shutil.rmtree(text_dir, ignore_errors=True)


def memory_table(args) -> list[dict]:
    probes = [("inference", 1), ("inference", 32), ("training", args.train_batch)]
    rows = []
    for kind, batch in probes:
        cmd = [sys.executable, __file__, "--probe", kind, "--probe-batch", str(batch), "--device", args.device,
               "--precision", args.precision]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"  {kind:9s} batch {batch:3d}: peak RSS {row['peak_rss_mib']:8.0f} MiB"
              + (f", GPU {row['peak_gpu_allocated_mib']:8.0f} MiB" if "peak_gpu_allocated_mib" in row else ""),
              flush=True)
    return rows


# ---- report ------------------------------------------------------------------------------------------------------
def machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in dict.fromkeys(r["model"] for r in rows):
        pts = [(r["batch"], r["pairs_per_s"]) for r in rows if r["model"] == name]
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # 1, 4, 16 rather than 2^0, 2^2, 2^4
        axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xticks(sorted({r["batch"] for r in rows}))
    ax.set_xlabel("batch size (image-expression pairs)")
    ax.set_ylabel("pairs / s")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--precision", default="auto", help="fp32, bf16, fp16 or auto (bf16/fp16 on CUDA only)")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated; default 1,4,16 (CPU) / 1,8,32,64 (GPU)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--latency-repeats", type=int, default=None)
    parser.add_argument("--train-batch", type=int, default=None)
    parser.add_argument("--train-repeats", type=int, default=None)
    parser.add_argument("--fusion-batch", type=int, default=32)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: forward,reprompt,training,memory")
    parser.add_argument("--reprompt-sizes", default="512x512,2048x1536",
                        help="image sizes (WxH) of the backend re-prompt measurement")
    parser.add_argument("--tag", default=None, help="result file suffix (default: the device kind)")
    parser.add_argument("--probe", choices=["inference", "training"], help=argparse.SUPPRESS)
    parser.add_argument("--probe-batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    if args.probe:
        print(json.dumps(memory_probe(args.probe, args.probe_batch, device, args.precision)))
        return 0
    args.reprompt_sizes = [tuple(int(v) for v in size.split("x")) for size in args.reprompt_sizes.split(",")]
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("1,8,32,64" if gpu else "1,4,16")).split(",")]
    args.repeats = args.repeats or (20 if gpu else 3)
    args.latency_repeats = args.latency_repeats or (50 if gpu else 10)
    args.train_batch = args.train_batch or (32 if gpu else 4)
    args.train_repeats = args.train_repeats or (10 if gpu else 2)
    skip = set(filter(None, args.skip.split(",")))
    dtype = resolve_precision(args.precision, device)
    precision = str(dtype).replace("torch.", "") if dtype else "fp32"
    # e.g. "nvidia-h100-80gb-hbm3": the GPU's whole name, so runs on different cards never overwrite each other
    tag = args.tag or (re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
                       if gpu else "cpu")

    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"created_at": datetime.now(timezone.utc).isoformat(), "machine": machine(device),
              "precision": precision}
    sag_model, text_dir = build_sag(device)
    try:
        if "forward" not in skip:
            print(f"== forward throughput ({precision}) ==", flush=True)
            clipseg, clipseg_size = build_clipseg(device)
            groupvit, groupvit_size = build_groupvit(device)
            rows = forward_throughput(args, device, (sag_model, clipseg, clipseg_size, groupvit, groupvit_size))
            del clipseg, groupvit
            report["forward"] = rows
            by = {(r["model"], r["batch"]): r["pairs_per_s"] for r in rows}
            sag_name = rows[0]["model"]
            report["sag_over_peers"] = {
                f"{peer} @ batch {b}": by[(sag_name, b)] / by[(peer, b)]
                for (peer, b) in by if peer != sag_name
            }
            plot(rows, RESULTS / f"model-throughput-{tag}.png",
                 f"pairs/s vs batch, {report['machine'].get('gpu', 'CPU')} ({precision}), random weights")
        if "reprompt" not in skip:
            print("== re-prompt latency (batch 1) ==", flush=True)
            report["reprompt"] = reprompt_latency(args, device, sag_model)
            print("  " + ", ".join(f"{k} {v:.2f}" for k, v in report["reprompt"].items()), flush=True)
            print("== re-prompt through the backend on an entity-cache hit (batch 1, guided refinement) ==",
                  flush=True)
            from backend.presets import build_initial_model

            served, _ = build_initial_model("mobilenet-minilm")
            report["load_average_start"] = os.getloadavg()
            report["reprompt_backend"] = (
                backend_reprompt(args, device, sag_model, "SaG paper-shaped (ViT-S/16 + BERT-base)",
                                 args.reprompt_sizes)
                + backend_reprompt(args, device, served.to(device).eval(), "mobilenet-minilm (served)",
                                   args.reprompt_sizes))
            report["load_average_end"] = os.getloadavg()
            del served
        if "training" not in skip:
            print("== training ==", flush=True)
            report["training"] = training_throughput(args, device, sag_model)
            print("  " + ", ".join(f"{k} {v:.3g}" for k, v in report["training"].items()), flush=True)
    finally:
        shutil.rmtree(text_dir, ignore_errors=True)
    del sag_model
    if "memory" not in skip:
        print("== memory ==", flush=True)
        report["memory"] = memory_table(args)

    out = RESULTS / f"model-{tag}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    print_tables(report)
    print(f"\nwrote {out}")
    return 0


def print_tables(report: dict) -> None:
    print(f"\nMachine: {report['machine'].get('gpu', report['machine']['platform'])}, "
          f"{report['machine']['cpu_count']} CPUs, torch {report['machine']['torch']}, {report['precision']}")
    if "forward" in report:
        print("\n| model | batch | pairs/s |\n|---|---:|---:|")
        for r in report["forward"]:
            print(f"| {r['model']} | {r['batch']} | {r['pairs_per_s']:.2f} |")
        print("\n| SaG / peer | ratio |\n|---|---:|")
        for k, v in report["sag_over_peers"].items():
            print(f"| {k} | {v:.2f}x |")
    if "reprompt" in report:
        r = report["reprompt"]
        print("\n| batch-1 latency | ms |\n|---|---:|")
        for k in ("full_forward_ms", "reprompt_cached_ms", "text_encoder_only_ms"):
            print(f"| {k[:-3].replace('_', ' ')} | {r[k]:.2f} |")
        print(f"| re-prompt / text encoder | {r['reprompt_over_text_encoder']:.2f}x (goal <= 1.2x) |")
    if "reprompt_backend" in report:
        load = report["load_average_start"][0], report["load_average_end"][0]
        print(f"\n| backend, entity-cache hit, guided refinement (load average {load[0]:.1f} -> {load[1]:.1f}) | image "
              "| text encoder ms | hit ms | hit / text encoder | hit decoding again ms | / text encoder | decode ms |"
              "\n|---|---|---:|---:|---:|---:|---:|---:|")
        for r in report["reprompt_backend"]:
            print(f"| {r['model']} | {r['image']} | {r['text_encoder_only_ms']:.1f} | {r['cache_hit_ms']:.1f} | "
                  f"{r['cache_hit_over_text_encoder']:.2f}x | {r['cache_hit_decoding_again_ms']:.1f} | "
                  f"{r['decoding_again_over_text_encoder']:.2f}x | {r['decode_only_ms']:.1f} |")
    if "training" in report:
        t = report["training"]
        print(f"\ntraining: {t['train_pairs_per_s']:.2f} pairs/s at batch {t['train_batch']}; "
              f"B x B fusion (B={t['fusion_batch']}): batched {t['fusion_batched_ms']:.1f} ms vs per-pair loop "
              f"{t['fusion_loop_ms']:.1f} ms ({t['fusion_loop_over_batched']:.1f}x)")
    if "memory" in report:
        print("\n| probe | batch | peak RSS MiB | peak GPU MiB |\n|---|---:|---:|---:|")
        for m in report["memory"]:
            print(f"| {m['kind']} | {m['batch']} | {m['peak_rss_mib']:.0f} | {m.get('peak_gpu_allocated_mib', '-')} |")


if __name__ == "__main__":
    sys.exit(main())
