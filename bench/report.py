"""The results of `bench/run.py` as plain-text tables (also pasted into bench/README.md)."""

from __future__ import annotations

from bench import noise

STAGES = ("decode", "mel", "detect", "infer", "paste", "encode", "base64")
VERDICT = {True: "PASS", False: "FAIL", None: "skipped"}


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "—" if v is None else format(v, fmt)


def _grid(head: list[str], rows: list[list[str]], notes: tuple[str, ...] = ()) -> list[str]:
    """Left-aligned first column, right-aligned numbers, then indented notes and a blank line."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda cells: "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    ).rstrip()
    return [line(head), line(["-" * w for w in widths]), *map(line, rows), *(f"   {n}" for n in notes), ""]


def _header(res: dict) -> list[str]:
    m, s = res["machine"], res["setup"]
    return [
        f"Wav2Lip bench · {m['date']} · {m['cpu']} · {m['cores']} cores ({', '.join(m['isa'])}) · OpenVINO {m.get('openvino', '?')}",
        f"commit {m['git_commit']}{' + local changes' if m['git_dirty'] else ''} · generator weights: {s['weights']}",
        f"request: {s['image']} 512×512, {s['audio']} {res['server']['e2e']['audio_s']:g} s, {s['fps']} fps, box {s['box']}",
        "",
    ]


def _perf(label: str, seconds: float, frames: int, audio_s: float, rss: str) -> list[str]:
    return [label, _f(seconds), str(frames), _f(frames / seconds, ".1f"), _f(seconds / audio_s), rss]


PEER_INTEL = "4 Intel digital-avatar OV backend, warm, batch 128, AVI+ffmpeg"


def _peer_intel(res: dict, audio_s: float) -> tuple[list[str], str]:
    """The Intel peer's row and its note: the speedup over it, or why it was skipped."""
    peer, e2e = res.get("peer_intel"), res["server"]["e2e"]
    if not peer:
        return [PEER_INTEL, *["—"] * 5], "4 skipped: ffmpeg is not on PATH (apt-get install ffmpeg)"
    row = _perf(PEER_INTEL, peer["seconds"], peer["frames"], audio_s, _f(peer["peak_rss_mb"], ".0f"))
    int8 = res["server_int8"]["e2e"]["wall_s"]
    note = (f"speedup 3 over 4: {peer['seconds'] / e2e['wall_s']:.2f}×, int8 {peer['seconds'] / int8:.2f}× "
            f"(4: median of {len(peer['runs_s'])} warm requests, "
            f"compiled {peer['precision']}; its MP4 holds {peer['mp4_frames']} frames)")  # fmt: skip
    return row, note


def _before_after(res: dict) -> list[str]:
    ref, mo, e2e = res["reference"], res["model_only"], res["server"]["e2e"]
    served, int8, f32, audio_s = mo["served"], mo["int8"], mo["f32"], e2e["audio_s"]
    q = res["server_int8"]
    worker_rss = lambda srv: _f(max(w["peak_rss_mb"] for w in srv["workers"].values()), ".0f")
    rows = [
        _perf("1 PyTorch eager reference, cold process, batch 128", ref["seconds"], ref["frames"], audio_s, _f(ref["peak_rss_mb"], ".0f")),
        _perf(f"2 OpenVINO generator alone, {served['precision']}, batch {served['batch']}", served["seconds"], mo["frames"], audio_s,
              _f(mo["peak_rss_mb"], ".0f") + "*"),
        _perf(f"  OpenVINO generator alone, {int8['precision']}", int8["seconds"], mo["frames"], audio_s, ""),
        _perf(f"  OpenVINO generator alone, {f32['precision']}", f32["seconds"], mo["frames"], audio_s, ""),
        _perf("3 server end to end: JSON+base64 in, MP4 out (median)", e2e["wall_s"], e2e["frames"], audio_s, worker_rss(res["server"])),
        _perf("  server end to end, PRECISION=int8 (median)", q["e2e"]["wall_s"], q["e2e"]["frames"], audio_s, worker_rss(q)),
    ]  # fmt: skip
    peer_row, peer_note = _peer_intel(res, audio_s)
    warm = ref["seconds"] - ref["model_load_s"]
    notes = (
        "RTF = seconds / audio seconds. * one process holding the bf16, int8 and f32 compiled generators",
        f"speedup 3 over 1: {ref['seconds'] / e2e['wall_s']:.1f}× (reference without its {ref['model_load_s']:.1f} s model load: "
        f"{warm / e2e['wall_s']:.1f}×); int8: {ref['seconds'] / q['e2e']['wall_s']:.1f}×",
        f"3 over 2 (end to end / generator alone, same frames): {e2e['wall_s'] / served['seconds']:.2f}×; "
        f"int8: {q['e2e']['wall_s'] / int8['seconds']:.2f}×",
        peer_note,
    )
    return _grid(["", "s/request", "frames", "frames/s", "RTF", "peak RSS MB"], [*rows, peer_row], notes)


def _stages(res: dict) -> list[str]:
    e2e = res["server"]["e2e"]
    ms = e2e["timings_ms"]
    keys = [k for k in STAGES if k in ms] + [k for k in ms if k not in STAGES]
    cells = (
        [_f(ms[k], ".0f") for k in keys] + [_f(e2e[k], ".0f") for k in ("transport_ms", "client_ms")] + [_f(e2e["wall_s"] * 1000, ".0f")]
    )
    notes = (
        "transport: HTTP time outside the stages (JSON parse + base64 decode of the request, JSON render, sockets)",
        "client: the client's JSON/base64 encode of the request and decode of the answer",
    )
    return _grid(
        ["server stages, ms", *keys, "transport", "client", "wall"],
        [[f"{e2e['audio_s']:g} s request, median of {len(e2e['runs_s'])}", *cells]],
        notes,
    )


def _avatar(res: dict) -> list[str]:
    srv, det = res["server"], res["model_only"]["detector"]
    new, rep, e2e = srv["new_avatar"]["timings_ms"], srv["repeat_avatar"]["timings_ms"], srv["e2e"]
    rows = [
        [f"{det['name']} alone, after a generator pass (as served)", _f(det["ms"], ".1f"), ""],
        [f"{det['name']} alone, back to back", _f(det["ms_back_to_back"], ".1f"), ""],
        [
            f"new avatars, no box (detector runs; median of {len(srv['new_avatar']['runs_s'])})",
            _f(new.get("detect"), ".1f"),
            _f(srv["new_avatar"]["wall_s"]),
        ],
        [
            f"same avatars again (face-box cache; median of {len(srv['repeat_avatar']['runs_s'])})",
            _f(rep.get("detect"), ".2f"),
            _f(srv["repeat_avatar"]["wall_s"]),
        ],
        [f"box given (median of {len(e2e['runs_s'])})", _f(e2e["timings_ms"].get("detect"), ".2f"), _f(e2e["wall_s"])],
        [f"1280×720 avatar, box given (median of {len(srv['hd_720p']['runs_s'])})", "", _f(srv["hd_720p"]["wall_s"])],
        [f"first request after ready (server ready in {srv['ready_s']:.1f} s)", "", _f(srv["first_request"]["wall_s"])],
    ]
    return _grid(["avatar / first call", "detect ms", "wall s"], rows)


def _length_row(label: str, p: dict) -> list[str]:
    return [label, str(p["frames"]), _f(p["wall_s"]), _f(p["fps"], ".1f"), _f(p["wall_s"] * 1000 / p["frames"], ".1f"), _f(p["rtf"])]


def _lengths(res: dict) -> list[str]:
    lengths, big = res["lengths"], res.get("rss_720p")
    rows = [_length_row(f"{p['audio_s']:g} s", p) for p in lengths["points"]]
    if big:
        rows.append(_length_row("120 s, 1280×720", big["request"]))
    fit = lengths["linear_fit"]
    notes = [f"fit over 512²: {fit['fixed_s']:.2f} s + {fit['ms_per_frame']:.2f} ms/frame, R² {fit['r2']:.4f}"]
    if big:
        at_ready = max(w["peak_rss_mb"] for w in big["workers_at_ready"].values())
        notes.append(f"120 s on 1280×720: worker peak RSS {big['peak_rss_mb']:.0f} MB (VmHWM; {at_ready:.0f} MB when ready)")
    return _grid(["audio length (512² unless said)", "frames", "wall s", "frames/s", "ms/frame", "RTF"], rows, tuple(notes))


def _workers(res: dict) -> list[str]:
    if not res.get("workers_threads"):
        return []
    rows = [[f"{r['workers']} × {r['threads']}", str(r["clients"]), str(r["requests"]), "+".join(map(str, r["requests_per_worker"])),
             _f(r["fps"], ".1f"), _f(r["mean_latency_s"]), _f(r["max_latency_s"]), _f(r["worker_peak_rss_mb"], ".0f")]
            for r in res["workers_threads"]]  # fmt: skip
    head = ["workers × OV threads", "clients", "requests", "per worker", "frames/s", "mean lat s", "max lat s", "peak RSS MB/worker"]
    return _grid(head, rows, ("per worker: how many of the requests each worker served (from the access log)",))


def _precision(res: dict) -> list[str]:
    mo = res["model_only"]
    served, int8, f32 = mo["served"], mo["int8"], mo["f32"]
    pairs = ((f"{served['precision']} vs f32", "drift_served_vs_f32"), (f"{int8['precision']} vs f32", "drift_int8_vs_f32"),
             (f"{int8['precision']} vs {served['precision']}", "drift_int8_vs_served"))  # fmt: skip
    rows = [[label, _f(mo[k]["mean_abs"], ".2f"), _f(mo[k]["p999_abs"], "g"), str(mo[k]["max_abs"]), _f(mo[k]["psnr_db"], ".1f")]
            for label, k in pairs]  # fmt: skip
    note = (f"generator alone, frames/s: {served['precision']} {served['fps']:.1f}, {int8['precision']} {int8['fps']:.1f} "
            f"({int8['fps'] / served['fps']:.2f}×), f32 {f32['fps']:.1f}; drift on the {mo['frames']} generated 96² crops, "
            "0–255")  # fmt: skip
    return _grid(["precision drift", "mean |d|", "99.9th pct", "max", "PSNR dB"], rows, (note,))


def _estimate(res: dict) -> list[str]:
    est = res.get("estimate")
    if not est:
        return []
    rows = [[_f(p["audio_s"], "g"), str(p["frames"]), _f(p["estimate_s"]), _f(p["measured_s"]), _f(p["ratio"])] for p in est["points"]]
    note = f"cost model (calibrated in {est['calibrate_s']:.2f} s on first use): {est['cost_model']}"
    return _grid(["TalkingHead: audio s", "frames", "estimate s", "measured s", "ratio"], rows, (note,))


def _noise(res: dict) -> list[str]:
    rows = [[name, str(n["attempts"]), _f(n["before"]["waited_s"], "g"), _f(n["foreign_cores"]), _f(n["steal_cores"]),
             _f(n["wall_s"], ".0f")] for name, n in res["noise"].items()]  # fmt: skip
    worst = max((n["foreign_cores"] for n in res["noise"].values()), default=0.0)
    notes = ["others' cores: CPU used by processes outside the bench, averaged over the (kept attempt of the) stage"]
    if worst > noise.NOISY_CORES:
        notes.append(f"WARNING: other processes used up to {worst:.2f} cores during a stage; that stage's times are pessimistic")
    return _grid(["stage", "attempts", "waited s", "others' cores", "steal cores", "wall s"], rows, tuple(notes))


def table(res: dict) -> str:
    """Every section of the results, one block each."""
    verdict = lambda c: VERDICT[c["pass"]] + (f" (disturbed: {', '.join(c['disturbed'])})" if c["disturbed"] else "")
    checks = [[name, _f(c["value"], ".3g"), c["target"], verdict(c)] for name, c in res["checks"].items()]
    parts = [_header, _before_after, _stages, _avatar, _lengths, _estimate, _workers, _precision, _noise]
    return "\n".join([line for part in parts for line in part(res)] + _grid(["check", "value", "target", "result"], checks)).rstrip()
