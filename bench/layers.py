"""Where the generator's time goes, per block, against what this CPU can do: `make bench-layers`.

    python -m bench.layers [--models ir_models] [--runs 20]

The served decoder (the split generator of still avatars, batch BATCH_SIZE, threads = cores) is
profiled with OpenVINO's performance counters at bf16 (f32 where the CPU has no bf16) and, when the
models folder has it, the INT8 decoder. Each convolution's multiply-accumulates come from its shapes;
per block (`audio_encoder`, `face_decoder_blocks.k`, `output_block`): milliseconds per batch and
GMAC/s. The yardstick is one large 3×3 convolution (256→256 channels, 48², the same batch) compiled
the same way: the best rate this CPU and plugin reach on a convolution. Writes
bench/results/layers.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import openvino as ov

from harness import ROOT
from wav2lip_core.config import Settings
from wav2lip_core.quantize import conv_blocks, macs
from wav2lip_core.runtime import Manifest, cpu_properties

RESULTS = ROOT / "bench" / "results" / "layers.json"


def profile(compiled: ov.CompiledModel, inputs: dict[str, np.ndarray], runs: int) -> tuple[dict[str, float], float]:
    """Median ms per node over `runs` inferences (after 5 warm-up), and the median wall ms of an inference."""
    request = compiled.create_infer_request()
    for _ in range(5):
        request.infer(inputs)
    per_node: dict[str, list[float]] = defaultdict(list)
    walls = []
    for _ in range(runs):
        request.infer(inputs)
        walls.append(request.latency)
        for p in request.profiling_info:
            per_node[p.node_name].append(p.real_time.total_seconds() * 1000)
    return {k: statistics.median(v) for k, v in per_node.items()}, statistics.median(walls)


def yardstick(core: ov.Core, properties: dict, batch: int, runs: int) -> float:
    """GMAC/s of one large 3×3 convolution (256→256 channels at 48², `batch` frames): what a convolution can reach here."""
    x = ov.opset13.parameter([batch, 256, 48, 48], ov.Type.f32, name="x")
    w = ov.opset13.constant(np.random.default_rng(0).standard_normal((256, 256, 3, 3)).astype(np.float32) * 0.02)
    conv = ov.opset13.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])
    compiled = core.compile_model(ov.Model([conv], [x]), "CPU", properties)
    _, wall_ms = profile(compiled, {"x": np.ones((batch, 256, 48, 48), np.float32)}, runs)
    return macs(conv) / wall_ms / 1e6


def blocks_table(model: ov.Model, compiled: ov.CompiledModel, inputs: dict[str, np.ndarray], runs: int) -> dict[str, object]:
    """Per block: ms per batch (its convolutions), GMAC per batch, GMAC/s; the whole inference's wall ms."""
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    per_node, wall_ms = profile(compiled, inputs, runs)
    rows = {}
    for block, names in conv_blocks(model).items():
        ms = sum(per_node.get(n, 0.0) for n in names)
        gmac = sum(macs(ops[n]) for n in names) / 1e9
        rows[block] = {"ms": round(ms, 3), "gmac": round(gmac, 4), "gmac_per_s": round(gmac / ms * 1000, 1) if ms else None}
    conv_ms = sum(r["ms"] for r in rows.values())
    return {"wall_ms": round(wall_ms, 3), "conv_ms": round(conv_ms, 3), "other_ms": round(sum(per_node.values()) - conv_ms, 3),
            "gmac": round(sum(r["gmac"] for r in rows.values()), 4), "blocks": rows}  # fmt: skip


def measure(models: Path, runs: int) -> dict[str, object]:
    settings = Settings()
    manifest = Manifest.read(models)
    core = ov.Core()
    batch = settings.batch_size
    float_precision = cpu_properties(core, "auto", settings.threads())["INFERENCE_PRECISION_HINT"]
    properties = cpu_properties(core, "auto", settings.threads()) | {"PERF_COUNT": True}
    encoder = core.compile_model(models / manifest.generator.split.face_encoder, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    feats = encoder({"face": np.random.default_rng(0).random((1, 6, 96, 96), dtype=np.float32)})
    mel = np.random.default_rng(1).uniform(-4, 0, (batch, 1, 80, 16)).astype(np.float32)
    inputs = {"mel": mel} | {p.get_any_name(): np.array(feats[p]) for p in encoder.outputs}
    files = {float_precision: manifest.generator.split.decoder}
    if manifest.generator.int8 is not None:
        files[f"int8+{float_precision}"] = manifest.generator.int8.decoder
    out: dict[str, object] = {"batch": batch, "threads": settings.threads(), "openvino": ov.get_version(),
                              "yardstick_gmac_per_s": round(yardstick(core, properties, batch, runs), 1), "decoders": {}}  # fmt: skip
    for label, file in files.items():
        model = core.read_model(models / file)
        model.reshape({"mel": list(mel.shape)})
        compiled = core.compile_model(model, "CPU", properties)
        out["decoders"][label] = blocks_table(model, compiled, inputs, runs)
    return out


def report(res: dict) -> str:
    peak = res["yardstick_gmac_per_s"]
    lines = [f"yardstick: one 3×3 convolution 256→256 at 48², batch {res['batch']}: {peak:.0f} GMAC/s", ""]
    for label, d in res["decoders"].items():
        n = res["batch"]
        lines.append(f"decoder {label}: {d['wall_ms']:.1f} ms per batch of {n} ({d['wall_ms'] / n:.2f} ms/frame), "
                     f"convolutions {d['conv_ms']:.1f} ms, the rest {d['other_ms']:.1f} ms, {d['gmac'] / n:.2f} GMAC/frame")  # fmt: skip
        lines.append(f"  {'block':24s} {'ms':>6s} {'GMAC':>7s} {'GMAC/s':>7s} {'of yardstick':>12s}")
        for block, r in d["blocks"].items():
            rate = r["gmac_per_s"]
            share = f"{rate / peak:.0%}" if rate else "—"
            lines.append(f"  {block:24s} {r['ms']:6.2f} {r['gmac']:7.3f} {rate or 0:7.0f} {share:>12s}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=ROOT / "ir_models")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    res = measure(args.models, args.runs)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(report(res))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
