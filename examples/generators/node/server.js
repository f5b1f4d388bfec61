#!/usr/bin/env node
// An example regen.v1.Generator in Node.js, written from proto/regen/v1/*.proto alone.
//
// It has no model: each image is a deterministic picture (a gradient and a few shapes)
// whose colours and positions come from a hash of (prompt text, seed, width, height),
// encoded as PNG here with Node's zlib. Each image costs `--step-ms` of waiting per step,
// standing in for a model's compute, so deadlines and cancellation have work to stop.
// A prompt containing the word "forbidden" is refused, so benchmarks can exercise refusals.
//
//   npm ci && node server.js --port 50052        (--port 0 picks a free port)
//
// Serves regen.v1.Generator and grpc.health.v1.Health (SERVING under "" and
// "regen.v1.Generator") on --host (default 127.0.0.1); prints `listening on HOST:PORT`
// once bound; stops cleanly on SIGTERM / SIGINT. REGEN_PROTO_DIR overrides where the
// .proto files are read from (default: the repository's proto/ folder).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const zlib = require('node:zlib');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const { HealthImplementation } = require('grpc-health-check');

const SERVICE = 'regen.v1.Generator';
const MODEL_ID = 'regen-example-node';
// The revision is the hash of this file: change the renderer, and results name a new one.
const REVISION = crypto.createHash('sha256').update(fs.readFileSync(__filename)).digest('hex').slice(0, 16);
const REGEN_VERSION = require('./package.json').version;
const GRPC_JS_VERSION = require('@grpc/grpc-js/package.json').version;

// Limits and defaults, reported by Info and enforced by Generate.
const MAX_BATCH = 8;
const SIZE_MULTIPLE = 8;
const MAX_SIDE = 1024;
const DEFAULT_SIZE = 64;
const DEFAULT_STEPS = 1;
const MAX_STEPS = 500;
const MAX_PROMPT_CHARS = 4000;
const MAX_SEED = (1n << 63n) - 1n;
const MESSAGE_LIMIT = 64 * 1024 * 1024; // above gRPC's 4 MiB default: batches of PNGs are large

function options() {
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '50052' },
      'step-ms': { type: 'string', default: '20' },
    },
  });
  const port = Number(values.port);
  const stepMs = Number(values['step-ms']);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port: ${values.port} is not a port`);
  if (!(stepMs >= 0)) throw new Error(`--step-ms: ${values['step-ms']} is not a number >= 0`);
  return { host: values.host, port, stepMs };
}

function loadContract() {
  const protoDir = process.env.REGEN_PROTO_DIR || path.resolve(__dirname, '..', '..', '..', 'proto');
  const definition = protoLoader.loadSync('regen/v1/generator.proto', {
    includeDirs: [protoDir],
    keepCase: true,
    longs: String, // int64 seeds beyond 2^53 survive as strings
    enums: String,
    defaults: true,
    oneofs: true, // proto3 `optional` fields: `_width === 'width'` when set
  });
  return grpc.loadPackageDefinition(definition).regen.v1;
}

// ---- Errors: a message that starts with the field, and google.rpc details (common.proto) ----

// The three google.rpc messages the contract's error details use, declared by their public
// field numbers (googleapis google/rpc/status.proto and error_details.proto).
const RPC_TYPES = protobuf.parse(`
  syntax = "proto3";
  package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message BadRequest {
    message FieldViolation { string field = 1; string description = 2; }
    repeated FieldViolation field_violations = 1;
  }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
`, { keepCase: true }).root;

function rpcError(code, message, detailType, detail) {
  const type = RPC_TYPES.lookupType(`google.rpc.${detailType}`);
  const any = { type_url: `type.googleapis.com/google.rpc.${detailType}`, value: type.encode(type.create(detail)).finish() };
  const Status = RPC_TYPES.lookupType('google.rpc.Status');
  const metadata = new grpc.Metadata();
  metadata.set('grpc-status-details-bin', Buffer.from(Status.encode(Status.create({ code, message, details: [any] })).finish()));
  return { code, details: message, metadata };
}

class InvalidArgument extends Error {
  constructor(field, problem) {
    super(`${field}: ${problem}`);
    this.field = field;
  }
}

function statusOf(err) {
  if (err instanceof InvalidArgument) {
    return rpcError(grpc.status.INVALID_ARGUMENT, err.message, 'BadRequest', {
      field_violations: [{ field: err.field, description: err.message }],
    });
  }
  console.error(err);
  const message = `example generator: ${err && err.stack ? err.stack.split('\n').slice(0, 2).join(' ') : err}`;
  return rpcError(grpc.status.INTERNAL, message, 'ErrorInfo', { reason: 'INTERNAL', domain: 'regen.v1' });
}

// ---- Validation, as services/generator's core does it ----

const isSet = (request, name) => request[`_${name}`] === name;

function checkSize(request, name) {
  if (!isSet(request, name)) return DEFAULT_SIZE;
  const value = request[name];
  if (value < SIZE_MULTIPLE || value > MAX_SIDE) {
    throw new InvalidArgument(name, `${value} is out of range; use ${SIZE_MULTIPLE} to ${MAX_SIDE}`);
  }
  if (value % SIZE_MULTIPLE) throw new InvalidArgument(name, `${value} is not a multiple of ${SIZE_MULTIPLE}`);
  return value;
}

function validate(request) {
  const prompts = request.prompts || [];
  if (prompts.length === 0) throw new InvalidArgument('prompts', 'empty; send at least one prompt');
  if (prompts.length > MAX_BATCH) {
    throw new InvalidArgument(
      'prompts',
      `${prompts.length} prompts exceed this generator's max_batch of ${MAX_BATCH}; split the request`,
    );
  }
  const width = checkSize(request, 'width');
  const height = checkSize(request, 'height');
  if (isSet(request, 'steps') && !(request.steps >= 1 && request.steps <= MAX_STEPS)) {
    throw new InvalidArgument(
      'steps',
      `${request.steps} is out of range; use 1 to ${MAX_STEPS}, or leave it unset for the model's default (${DEFAULT_STEPS})`,
    );
  }
  if (isSet(request, 'guidance_scale')) {
    const guidance = request.guidance_scale;
    if (!Number.isFinite(guidance) || guidance < 0 || guidance > 100) {
      throw new InvalidArgument('guidance_scale', `${guidance} is out of range; use 0 to 100`);
    }
  }
  // steps and guidance_scale are validated but do not change the picture (capabilities.sampling_params false).
  return prompts.map((spec, index) => {
    const where = `prompts[${index}]`;
    if (!spec.text.trim()) throw new InvalidArgument(`${where}.text`, 'empty; every prompt needs text');
    for (const name of ['text', 'negative_prompt']) {
      const chars = [...spec[name]].length;
      if (chars > MAX_PROMPT_CHARS) {
        throw new InvalidArgument(`${where}.${name}`, `${chars} characters exceeds the limit of ${MAX_PROMPT_CHARS}`);
      }
    }
    const seed = BigInt(spec.seed);
    if (seed < 0n) throw new InvalidArgument(`${where}.seed`, `${spec.seed} is negative; seeds must be >= 0`);
    if (seed > MAX_SEED) throw new InvalidArgument(`${where}.seed`, `${spec.seed} is out of range; seeds must be <= ${MAX_SEED}`);
    if (spec.negative_prompt) {
      throw new InvalidArgument(`${where}.negative_prompt`, `the node engine (${MODEL_ID}) has none`);
    }
    return { index, text: spec.text, seed: spec.seed, width, height };
  });
}

// ---- The picture: a pure function of (text, seed, width, height) ----

// sfc32, seeded from a SHA-256 of the inputs. Only 32-bit integer operations: the same
// numbers on every platform.
function random(text, seed, width, height) {
  const key = crypto.createHash('sha256').update(JSON.stringify([text, seed, width, height])).digest();
  let a = key.readUInt32LE(0), b = key.readUInt32LE(4), c = key.readUInt32LE(8), d = key.readUInt32LE(12);
  const next = () => {
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return (t >>> 0) / 4294967296;
  };
  for (let i = 0; i < 12; i++) next();
  return next;
}

// RGB bytes, row by row. Plain arithmetic only (no Math.sin and such, whose last bits may
// differ between engines), so the same inputs give the same bytes everywhere.
function render(text, seed, width, height) {
  const rand = random(text, seed, width, height);
  const colour = () => [0, 0, 0].map(() => Math.floor(rand() * 256));
  const [from, to] = [colour(), colour()];
  const dx = rand() * 2 - 1, dy = rand() * 2 - 1;
  const span = Math.abs(dx) * (width - 1) + Math.abs(dy) * (height - 1) || 1;
  const offset = (dx < 0 ? -dx * (width - 1) : 0) + (dy < 0 ? -dy * (height - 1) : 0);
  const side = Math.min(width, height);
  const shapes = Array.from({ length: 3 + Math.floor(rand() * 4) }, () => ({
    circle: rand() < 0.5,
    cx: rand() * width,
    cy: rand() * height,
    rx: (0.08 + rand() * 0.25) * side,
    ry: (0.08 + rand() * 0.25) * side,
    alpha: 0.5 + rand() * 0.45,
    rgb: colour(),
  }));
  const pixels = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const t = (dx * x + dy * y + offset) / span;
      let rgb = [0, 1, 2].map((k) => from[k] + (to[k] - from[k]) * t);
      for (const s of shapes) {
        const u = (x + 0.5 - s.cx) / s.rx, v = (y + 0.5 - s.cy) / s.ry;
        const inside = s.circle ? u * u + v * v <= 1 : Math.abs(u) <= 1 && Math.abs(v) <= 1;
        if (inside) rgb = rgb.map((value, k) => value + (s.rgb[k] - value) * s.alpha);
      }
      const at = (y * width + x) * 3;
      for (let k = 0; k < 3; k++) pixels[at + k] = Math.max(0, Math.min(255, Math.round(rgb[k])));
    }
  }
  return pixels;
}

// ---- PNG: signature, IHDR, IDAT (zlib), IEND, each chunk with its CRC-32 ----

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const byte of bytes) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([length, body, crc]);
}

function encodePng(rgb, width, height) {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bit depth
  header[9] = 2; // colour type: RGB
  // bytes 10-12: compression 0 (deflate), filter method 0, no interlace
  const stride = width * 3;
  const raw = Buffer.alloc((stride + 1) * height);
  for (let y = 0; y < height; y++) {
    raw[y * (stride + 1)] = 0; // filter type: None
    rgb.copy(raw, y * (stride + 1) + 1, y * stride, (y + 1) * stride);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', zlib.deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

// ---- The service ----

const REFUSED_WORD = /\bforbidden\b/i;

function generatorService({ stepMs }) {
  const started = process.hrtime.bigint();
  const seconds = (since) => Number(process.hrtime.bigint() - since) / 1e9;
  const stats = { stepsRun: 0, busyS: 0, batches: 0, items: 0 };
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function info(call, callback) {
    callback(null, {
      model: { model_id: MODEL_ID, revision: REVISION, backend: 'node', device: 'cpu', dtype: 'uint8' },
      server: {
        regen_version: REGEN_VERSION,
        library_versions: { node: process.version, '@grpc/grpc-js': GRPC_JS_VERSION },
        busy_s: stats.busyS,
        batches: String(stats.batches),
        items: String(stats.items),
        uptime_s: seconds(started),
      },
      prompt_token_budget: 0,
      default_width: DEFAULT_SIZE,
      default_height: DEFAULT_SIZE,
      default_steps: DEFAULT_STEPS,
      default_guidance_scale: 0,
      max_batch: MAX_BATCH,
      size_multiple: SIZE_MULTIPLE,
      steps_run: String(stats.stepsRun),
      capabilities: { seeded: true, negative_prompt: false, sampling_params: false, sizes: [], max_side: MAX_SIDE },
    });
  }

  async function generate(call) {
    const arrived = process.hrtime.bigint();
    let items;
    try {
      items = validate(call.request);
    } catch (err) {
      call.emit('error', statusOf(err));
      return;
    }
    stats.batches += 1;
    try {
      // One image after another, each streamed as soon as it is done; a cancelled call
      // (deadline passed, client gone) stops before its next step.
      for (const item of items) {
        if (call.cancelled) return;
        const image = {
          index: item.index,
          seed: item.seed, // echoed exactly, as the string proto-loader gave us
          width: item.width,
          height: item.height,
          model_id: MODEL_ID,
          revision: REVISION,
          usage: {}, // nothing billed: no remote API behind this generator
        };
        if (REFUSED_WORD.test(item.text)) {
          image.refused = true;
          image.refusal_reason = 'the prompt contains the word "forbidden", which this example refuses';
        } else {
          for (let step = 0; step < DEFAULT_STEPS; step++) {
            await sleep(stepMs); // the model's work for one step
            if (call.cancelled) return;
            stats.stepsRun += 1;
          }
          const busy = process.hrtime.bigint();
          image.png = encodePng(render(item.text, item.seed, item.width, item.height), item.width, item.height);
          stats.busyS += seconds(busy);
        }
        stats.items += 1;
        image.elapsed_s = seconds(arrived);
        call.write(image);
      }
      call.end();
    } catch (err) {
      if (!call.cancelled) call.emit('error', statusOf(err));
    }
  }

  return { Info: info, Generate: generate };
}

function main() {
  const opts = options();
  const regen = loadContract();
  const server = new grpc.Server({
    'grpc.max_receive_message_length': MESSAGE_LIMIT,
    'grpc.max_send_message_length': MESSAGE_LIMIT,
  });
  server.addService(regen.Generator.service, generatorService(opts));
  const health = new HealthImplementation({ '': 'NOT_SERVING', [SERVICE]: 'NOT_SERVING' });
  health.addToServer(server);

  server.bindAsync(`${opts.host}:${opts.port}`, grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) {
      console.error(`cannot listen on ${opts.host}:${opts.port}: ${err.message}`);
      process.exit(1);
    }
    // Nothing to load: serving as soon as bound.
    health.setStatus('', 'SERVING');
    health.setStatus(SERVICE, 'SERVING');
    console.log(`listening on ${opts.host}:${port}`);
  });

  let stopping = false;
  const stop = (signal) => {
    if (stopping) return;
    stopping = true;
    console.error(`${signal}: stopping`);
    health.setStatus('', 'NOT_SERVING');
    health.setStatus(SERVICE, 'NOT_SERVING');
    // Finish the calls in flight for up to 5 s, then cut them.
    const force = setTimeout(() => {
      server.forceShutdown();
      process.exit(0);
    }, 5000);
    force.unref();
    server.tryShutdown(() => {
      clearTimeout(force);
      process.exit(0);
    });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main();
