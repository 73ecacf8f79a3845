// tus-js-client (Node) upload of one file to a tus creation URL, at its defaults.
//
//   node tus_upload.mjs FILE URL
//
// An fs.ReadStream with a path lets tus-js-client read the file by range (its FileSource);
// chunkSize stays at its default (Infinity: one PATCH for the whole file).
import { createReadStream, statSync } from 'node:fs';
import { Upload } from 'tus-js-client';

const [file, endpoint] = process.argv.slice(2);
if (!file || !endpoint) {
  process.stderr.write('usage: node tus_upload.mjs FILE URL\n');
  process.exit(2);
}
const size = statSync(file).size;
const upload = new Upload(createReadStream(file), {
  endpoint,
  uploadSize: size,
  retryDelays: null,
  metadata: { filename: file.split('/').pop() },
  onError(err) {
    process.stderr.write(`tus-js-client: ${err}\n`);
    process.exit(1);
  },
  onSuccess() {
    process.exit(0);
  },
});
upload.start();
