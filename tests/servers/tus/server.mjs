// A real tus 1.0.0 server (@tus/server) for chunkhaul's integration tests, demo and bench.
//
//   node server.mjs --store file --dir DIR [--port 0] [--max-size N]
//                   [--expiration-ms N [--cleanup-interval-ms N]] [--exit-on-stdin-close]
//   node server.mjs --store s3 [--port 0] ...   (S3 settings from the environment, below)
//
// Binds 127.0.0.1 only, serves the tus endpoint at /files/. The first stdout line is
// `LISTENING <port>` once the socket accepts connections, so a launcher can pass port 0
// and read the kernel-chosen port instead of racing for a "free" one.
//
// S3 store settings come from the environment (never argv: argv is visible in `ps`):
//   TUS_S3_ENDPOINT, TUS_S3_BUCKET, TUS_S3_REGION (default us-east-1),
//   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
//   TUS_S3_FORCE_PATH_STYLE (default 1), TUS_S3_PART_SIZE (bytes, default 5 MiB),
//   TUS_S3_USE_TAGS (default 0: object tagging is only needed for expiration lifecycles).
// Every CLI flag can also be given as TUS_<FLAG> (e.g. TUS_PORT, TUS_MAX_SIZE).
import { parseArgs } from 'node:util';
import { mkdirSync } from 'node:fs';
import { Server } from '@tus/server';
import { FileStore } from '@tus/file-store';
import { S3Store } from '@tus/s3-store';

const MIB = 1024 * 1024;

function readOptions() {
  const env = process.env;
  const { values } = parseArgs({
    options: {
      port: { type: 'string', default: env.TUS_PORT ?? '0' },
      store: { type: 'string', default: env.TUS_STORE ?? 'file' },
      dir: { type: 'string', default: env.TUS_DIR },
      'max-size': { type: 'string', default: env.TUS_MAX_SIZE },
      'expiration-ms': { type: 'string', default: env.TUS_EXPIRATION_MS },
      'cleanup-interval-ms': { type: 'string', default: env.TUS_CLEANUP_INTERVAL_MS },
      // Exit when stdin reaches EOF: the launcher holds a pipe, so a killed parent
      // (even kill -9) never leaves an orphan server holding a port.
      'exit-on-stdin-close': { type: 'boolean', default: false },
    },
  });
  return values;
}

function positiveInt(text, name) {
  if (text === undefined || text === '') return undefined;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer`);
  return n;
}

function makeFileStore(opts, expirationMs) {
  if (!opts.dir) throw new Error('--dir is required for --store file');
  mkdirSync(opts.dir, { recursive: true });
  return new FileStore({ directory: opts.dir, expirationPeriodInMilliseconds: expirationMs });
}

function makeS3Store(expirationMs) {
  const env = process.env;
  for (const name of ['TUS_S3_ENDPOINT', 'TUS_S3_BUCKET', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY']) {
    if (!env[name]) throw new Error(`${name} is required for --store s3`);
  }
  return new S3Store({
    // S3 rejects non-trailing multipart parts under 5 MiB, so 5 MiB is also the floor here.
    partSize: positiveInt(env.TUS_S3_PART_SIZE, 'TUS_S3_PART_SIZE') ?? 5 * MIB,
    expirationPeriodInMilliseconds: expirationMs,
    useTags: env.TUS_S3_USE_TAGS === '1',
    s3ClientConfig: {
      bucket: env.TUS_S3_BUCKET,
      endpoint: env.TUS_S3_ENDPOINT,
      region: env.TUS_S3_REGION || 'us-east-1',
      forcePathStyle: (env.TUS_S3_FORCE_PATH_STYLE ?? '1') === '1',
      credentials: {
        accessKeyId: env.AWS_ACCESS_KEY_ID,
        secretAccessKey: env.AWS_SECRET_ACCESS_KEY,
      },
      // Recent AWS SDKs add CRC32 trailers to every PutObject/UploadPart by default;
      // S3-compatible stores (SeaweedFS included) don't all accept them.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    },
  });
}

function main() {
  const opts = readOptions();
  const expirationMs = positiveInt(opts['expiration-ms'], '--expiration-ms') ?? 0;
  const maxSize = positiveInt(opts['max-size'], '--max-size');
  let datastore;
  if (opts.store === 'file') datastore = makeFileStore(opts, expirationMs);
  else if (opts.store === 's3') datastore = makeS3Store(expirationMs);
  else throw new Error(`unknown --store ${opts.store} (file or s3)`);

  const server = new Server({ path: '/files', datastore, maxSize });
  const http = server.listen({ host: '127.0.0.1', port: positiveInt(opts.port, '--port') });
  http.on('listening', () => {
    process.stdout.write(`LISTENING ${http.address().port}\n`);
  });

  const cleanupMs = positiveInt(opts['cleanup-interval-ms'], '--cleanup-interval-ms') ?? 0;
  if (expirationMs > 0 && cleanupMs > 0) {
    // Stores only delete expired uploads when asked. Off by default: until a sweep runs
    // an expired upload answers 410, after it 404, and tests want one deterministic answer.
    const timer = setInterval(() => server.cleanUpExpiredUploads().catch(() => {}), cleanupMs);
    timer.unref();
  }

  const stop = () => {
    http.close(() => process.exit(0));
    http.closeAllConnections(); // idle keep-alive sockets would hold close() open
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  if (opts['exit-on-stdin-close']) {
    process.stdin.on('end', () => process.exit(0));
    process.stdin.resume();
  }
}

try {
  main();
} catch (err) {
  process.stderr.write(`tus server: ${err.message}\n`);
  process.exit(2);
}
