// Starts the reference PDS (with an in-memory PLC) from @atproto/dev-env for relaybird's tests.
//
// Everything listens on 127.0.0.1 only, on ports picked free, with its data in a fresh temporary
// directory. Once up it prints one JSON line to stdout ({"pds": URL, "plc": URL, ...}) and stays up
// until stdin closes or it gets SIGTERM/SIGINT; then it shuts down and removes its data.
//
// Options: --rate-limits turns on the PDS's own rate limits (off in dev-env by default), so that a
// test can observe the real 429 answers.

import dns from 'node:dns'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'

// dev-env and the PLC server call listen(port) on every interface. Binding loopback is done here,
// before they are loaded, because neither offers a host option.
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

// dev-env keeps its SQLite files and blobs under os.tmpdir(), read at call time.
const dataRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'relaybird-pds-'))
process.env.TMPDIR = dataRoot

const rateLimits = process.argv.includes('--rate-limits')

const { TestNetworkNoAppView } = await import('@atproto/dev-env')

// The DID document goes with each session, as bsky.social's entryway does, so that clients switch
// to the PDS it names exactly as they do in production.
const network = await TestNetworkNoAppView.create({
  pds: { enableDidDocWithSession: true, ...(rateLimits ? { rateLimitsEnabled: true } : {}) },
})

process.stdout.write(
  JSON.stringify({
    pds: network.pds.url,
    plc: network.plc.url,
    pdsPort: network.pds.port,
    plcPort: network.plc.port,
    dataDir: dataRoot,
    rateLimits,
  }) + '\n',
)

let closing = false
async function shutdown(code) {
  if (closing) return
  closing = true
  try {
    await network.close()
  } catch (err) {
    process.stderr.write(`error while closing the test network: ${err}\n`)
    code = code || 1
  }
  fs.rmSync(dataRoot, { recursive: true, force: true })
  process.exit(code)
}

process.stdin.on('end', () => shutdown(0))
process.stdin.on('close', () => shutdown(0))
process.stdin.resume()
process.on('SIGTERM', () => shutdown(0))
process.on('SIGINT', () => shutdown(0))
