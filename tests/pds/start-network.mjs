// Starts @atproto/dev-env's full TestNetwork (PLC, PDS, Bluesky AppView, Ozone) for relaybird's tests.
//
// The AppView is what answers app.bsky.* calls (profiles, threads, notifications); a PDS alone
// answers them with 502. It keeps its index in PostgreSQL, which the caller provides:
//   DB_POSTGRES_URL     postgresql URL of a database the network may fill (required)
//   DB_POSTGRES_SCHEMA  schema suffix: tables go to appview_<suffix> and ozone_<suffix> (required)
//   REDIS_HOST          host:port of a Redis server (required by dev-env's TestNetwork)
// tests/appview.py starts private PostgreSQL and Redis servers and sets these.
//
// Everything listens on 127.0.0.1 only, on ports picked free, with its files in a fresh temporary
// directory. It loads its modules (seconds) at once, but starts the network only when the line
// `start` arrives on stdin, so that the caller can bring its databases up meanwhile. Once up it prints
// one JSON line to stdout ({"pds": URL, "appview": URL, "plc": URL, ...}) and stays up until stdin
// closes or it gets SIGTERM/SIGINT; then it shuts down and removes its files.

import dns from 'node:dns'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import readline from 'node:readline'

// dev-env's servers call listen(port) on every interface and offer no host option: bind loopback
// here, before they are loaded.
const originalListen = net.Server.prototype.listen
net.Server.prototype.listen = function listenOnLoopback(...args) {
  if (typeof args[0] === 'number' || (typeof args[0] === 'string' && /^\d+$/.test(args[0]))) {
    const rest = args.slice(1)
    if (typeof rest[0] !== 'string') {
      return originalListen.call(this, args[0], '127.0.0.1', ...rest)
    }
  } else if (args[0] && typeof args[0] === 'object' && 'port' in args[0] && !args[0].host) {
    return originalListen.call(this, { ...args[0], host: '127.0.0.1' }, ...args.slice(1))
  }
  return originalListen.apply(this, args)
}

// The services name each other as http://localhost:PORT; make that resolve to the address they
// actually listen on.
dns.setDefaultResultOrder('ipv4first')

for (const name of ['DB_POSTGRES_URL', 'DB_POSTGRES_SCHEMA', 'REDIS_HOST']) {
  if (!process.env[name]) {
    process.stderr.write(`${name} is not set: start this through tests/appview.py\n`)
    process.exit(2)
  }
}

// dev-env keeps the PDS's SQLite files and blobs under os.tmpdir(), read at call time.
const dataRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'relaybird-network-'))
process.env.TMPDIR = dataRoot

const { TestNetwork } = await import('@atproto/dev-env')

let network = null
let starting = false
let closing = false
async function shutdown(code) {
  if (closing) return
  closing = true
  try {
    await network?.close()
  } catch (err) {
    process.stderr.write(`error while closing the test network: ${err}\n`)
    code = code || 1
  }
  fs.rmSync(dataRoot, { recursive: true, force: true })
  process.exit(code)
}

async function start() {
  const started = Date.now()
  // The DID document goes with each session, as bsky.social's entryway does, so that clients
  // switch to the PDS it names exactly as they do in production.
  network = await TestNetwork.create({
    dbPostgresUrl: process.env.DB_POSTGRES_URL,
    dbPostgresSchema: process.env.DB_POSTGRES_SCHEMA,
    pds: { enableDidDocWithSession: true },
  })
  process.stdout.write(
    JSON.stringify({
      pds: network.pds.url,
      appview: network.bsky.url,
      plc: network.plc.url,
      ozone: network.ozone.url,
      appviewDid: network.bsky.serverDid,
      pdsPort: network.pds.port,
      appviewPort: network.bsky.port,
      plcPort: network.plc.port,
      dataDir: dataRoot,
      startMs: Date.now() - started,
    }) + '\n',
  )
}

const input = readline.createInterface({ input: process.stdin })
input.on('line', (line) => {
  if (line.trim() === 'start' && !starting && !closing) {
    starting = true
    start().catch((err) => {
      process.stderr.write(`the test network did not start: ${err?.stack ?? err}\n`)
      shutdown(1)
    })
  }
})
input.on('close', () => shutdown(0))
process.on('SIGTERM', () => shutdown(0))
process.on('SIGINT', () => shutdown(0))
