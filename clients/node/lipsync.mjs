#!/usr/bin/env node
// Client for the Wav2Lip server's `POST /api/generate`: Node >= 18 built-in fetch, no dependencies.
//
//   import { generate } from "./lipsync.mjs";
//   const { mp4, meta } = await generate({ url: "http://127.0.0.1:8000", image, audio });
//
//   node lipsync.mjs --url http://127.0.0.1:8000 --image face.jpg --audio speech.wav --out out.mp4

import { readFile, writeFile } from "node:fs/promises";
import { realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const DEFAULT_RETRIES = 3; // extra attempts after a 503; each waits the server's Retry-After
export const MAX_RETRY_WAIT_S = 60; // a Retry-After larger than this is capped, so a retry stays bounded in time
const FINAL_503_CODES = new Set(["models_missing"]); // the IR is absent: waiting does not help

/** An error response from the server (or the network): `status` 0 means no HTTP response. */
export class LipSyncError extends Error {
  constructor(message, { status = 0, code = "error", requestId = null, retryAfter = null, cause } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = "LipSyncError";
    this.status = status;
    this.code = code;
    this.requestId = requestId;
    this.retryAfter = retryAfter; // seconds, from the Retry-After header of a 503
  }
}

/** Seconds from a Retry-After header (delta-seconds or an HTTP date); null when absent or unreadable. */
export function parseRetryAfter(value, now = Date.now()) {
  if (value == null || value.trim() === "") return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - now) / 1000));
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

async function errorFrom(resp) {
  const requestId = resp.headers.get("x-request-id");
  const retryAfter = parseRetryAfter(resp.headers.get("retry-after"));
  const text = await resp.text();
  let error = null;
  try {
    error = JSON.parse(text)?.error ?? null;
  } catch {
    // not JSON: a proxy's HTML page, say; reported below with the start of the body
  }
  if (error && typeof error.code === "string") {
    return new LipSyncError(String(error.message ?? error.code), { status: resp.status, code: error.code, requestId, retryAfter });
  }
  const snippet = text.replace(/\s+/g, " ").trim().slice(0, 200);
  return new LipSyncError(`HTTP ${resp.status} ${resp.statusText}${snippet ? `: ${snippet}` : ""}`, {
    status: resp.status,
    code: `http_${resp.status}`,
    requestId,
    retryAfter,
  });
}

/**
 * POST image + audio (Buffers) to `${url}/api/generate`; resolves to `{mp4: Buffer, meta}`.
 * A 503 (busy, not_ready) is retried up to `retries` times after its Retry-After; any other error
 * throws LipSyncError.
 * `onRetry(error, attempt, waitS)` is called before each wait.
 */
export async function generate({
  url,
  image,
  audio,
  fps,
  box,
  pads,
  paste,
  apiKey,
  retries = DEFAULT_RETRIES,
  signal,
  requestId,
  onRetry,
} = {}) {
  if (!url) throw new TypeError("generate: url is required");
  if (!Buffer.isBuffer(image) || image.length === 0) throw new TypeError("generate: image must be a non-empty Buffer");
  if (!Buffer.isBuffer(audio) || audio.length === 0) throw new TypeError("generate: audio must be a non-empty Buffer");
  const body = JSON.stringify({
    image: image.toString("base64"),
    audio: audio.toString("base64"),
    ...(fps != null && { fps }),
    ...(box != null && { box }),
    ...(pads != null && { pads }),
    ...(paste != null && { paste }),
  });
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  if (requestId) headers["X-Request-ID"] = requestId;
  const endpoint = new URL("api/generate", String(url).replace(/\/*$/, "/")).href; // keeps a path prefix (a proxy's /lipsync/)

  for (let attempt = 0; ; attempt++) {
    let resp;
    try {
      resp = await fetch(endpoint, { method: "POST", headers, body, signal });
    } catch (e) {
      if (signal?.aborted) throw e;
      const why = e.cause?.code ?? e.cause?.message ?? e.message;
      throw new LipSyncError(`could not reach ${endpoint}: ${why}`, { code: "network_error", cause: e });
    }
    if (resp.ok) {
      const rid = resp.headers.get("x-request-id");
      let meta;
      try {
        meta = await resp.json();
      } catch (e) {
        throw new LipSyncError(`response is not JSON: ${e.message}`, { status: resp.status, code: "bad_response", requestId: rid, cause: e });
      }
      if (typeof meta?.video !== "string") {
        throw new LipSyncError("response JSON has no 'video' string", { status: resp.status, code: "bad_response", requestId: rid });
      }
      const mp4 = Buffer.from(meta.video, "base64");
      delete meta.video;
      return { mp4, meta };
    }
    const err = await errorFrom(resp);
    if (resp.status !== 503 || FINAL_503_CODES.has(err.code) || attempt >= retries) throw err;
    const waitS = Math.min(err.retryAfter ?? 1, MAX_RETRY_WAIT_S);
    onRetry?.(err, attempt + 1, waitS);
    await sleep(waitS * 1000, signal);
  }
}

const USAGE = `usage: node lipsync.mjs --url URL --image FACE --audio SPEECH --out OUT.mp4
                        [--fps N] [--box X1 Y1 X2 Y2] [--pads T B L R] [--paste box|feather]
                        [--api-key KEY] [--retries N]
  --api-key defaults to $LIPSYNC_API_KEY`;

class UsageError extends Error {}

/** argv (without node and the script) → options; --box and --pads take 4 integers (or "a,b,c,d"). */
export function parseArgs(argv) {
  const opts = { retries: DEFAULT_RETRIES, apiKey: process.env.LIPSYNC_API_KEY };
  const single = { "--url": "url", "--image": "image", "--audio": "audio", "--out": "out", "--api-key": "apiKey", "--paste": "paste" };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new UsageError(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === "-h" || arg === "--help") opts.help = true;
    else if (arg in single) opts[single[arg]] = value();
    else if (arg === "--fps" || arg === "--retries") {
      const raw = value();
      const n = Number(raw);
      if (!Number.isFinite(n) || n < 0 || (arg === "--retries" && !Number.isInteger(n))) {
        throw new UsageError(`${arg} must be a ${arg === "--retries" ? "whole " : ""}number >= 0, got ${JSON.stringify(raw)}`);
      }
      opts[arg.slice(2)] = n;
    } else if (arg === "--box" || arg === "--pads") {
      const first = value();
      const parts = first.includes(",") ? first.split(",") : [first, ...argv.slice(i + 1, i + 4)];
      if (!first.includes(",")) i += 3;
      const ints = parts.map(Number);
      if (ints.length !== 4 || !ints.every(Number.isInteger)) throw new UsageError(`${arg} needs 4 integers, got ${parts.join(" ")}`);
      opts[arg.slice(2)] = ints;
    } else throw new UsageError(`unknown argument ${JSON.stringify(arg)}`);
  }
  if (opts.help) return opts;
  for (const name of ["url", "image", "audio", "out"]) {
    if (!opts[name]) throw new UsageError(`--${name} is required`);
  }
  return opts;
}

async function main(argv) {
  let opts;
  try {
    opts = parseArgs(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`${e.message}\n${USAGE}`);
    return 2;
  }
  if (opts.help) {
    console.log(USAGE);
    return 0;
  }
  const t0 = performance.now();
  try {
    const [image, audio] = await Promise.all([readFile(opts.image), readFile(opts.audio)]);
    const { mp4, meta } = await generate({
      ...opts,
      image,
      audio,
      onRetry: (err, attempt, waitS) =>
        console.error(`server answered 503 ${err.code}; retry ${attempt}/${opts.retries} in ${waitS} s`),
    });
    await writeFile(opts.out, mp4);
    const s = ((performance.now() - t0) / 1000).toFixed(1);
    console.log(
      `wrote ${opts.out}: ${meta.frames} frames ${meta.width}x${meta.height} @ ${meta.fps} fps, ` +
        `${meta.duration_s} s, ${mp4.length} bytes in ${s} s (request_id ${meta.request_id})`,
    );
    return 0;
  } catch (e) {
    if (e instanceof LipSyncError) {
      const where = e.status ? `HTTP ${e.status}` : "no response";
      console.error(`error ${e.code} (${where}): ${e.message}${e.requestId ? ` [request_id ${e.requestId}]` : ""}`);
      return 1;
    }
    if (e.code === "ENOENT" || e.code === "EISDIR" || e.code === "EACCES") {
      console.error(`error ${e.code}: ${e.message}`);
      return 1;
    }
    throw e;
  }
}

function isMain() {
  try {
    return process.argv[1] && realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) {
  process.exitCode = await main(process.argv.slice(2));
}
