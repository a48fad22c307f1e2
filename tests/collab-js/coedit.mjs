// Real Yjs clients co-editing a Chronicle session: npm yjs + y-websocket,
// unmodified, over Node's `ws`. tests/tests/collab.rs runs it.
//
//   node coedit.mjs '<json plan>'
//
// The plan: {"clients": [{"url": "ws://127.0.0.1:PORT/api/collab/ws",
//   "session": "<id>", "token": "...", "name": "ada", "type": "text to type",
//   "seed": 1}], "timeout_ms": 20000, "settle_ms": 300}
// Every client connects (y-websocket appends /<session> to the URL), waits
// until synced, announces itself in awareness, then all type at once: each
// inserts its text one character at a time at positions drawn from its
// seed. Then they wait until every text is the same (or the timeout) and
// the script prints one JSON line: the texts, whether they converged, what
// each saw of the others' awareness, and any permission-denied reason.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const plan = JSON.parse(process.argv[2])
const timeout = plan.timeout_ms ?? 20000
const denied = plan.clients.map(() => null)

// y-websocket reports a refusal with console.warn("Permission denied ...").
const warn = console.warn
console.warn = (...args) => {
  const text = args.join(' ')
  if (text.startsWith('Permission denied to access ')) {
    providers.forEach((p, i) => {
      if (text.startsWith(`Permission denied to access ${p.url}.`)) {
        denied[i] = text
      }
    })
  } else {
    warn(...args)
  }
}

function rng (seed) {
  let s = seed >>> 0 || 1
  return () => {
    s ^= s << 13; s >>>= 0
    s ^= s >>> 17
    s ^= s << 5; s >>>= 0
    return s / 4294967296
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const docs = plan.clients.map(() => new Y.Doc())
const providers = plan.clients.map((c, i) => new WebsocketProvider(c.url, c.session, docs[i], {
  WebSocketPolyfill: WebSocket,
  params: c.token ? { access_token: c.token } : {},
  disableBc: true
}))

const deadline = Date.now() + timeout
async function until (ok, what) {
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

try {
  await until(() => providers.every((p) => p.synced), 'every client to sync')
  providers.forEach((p, i) => p.awareness.setLocalStateField('user', { name: plan.clients[i].name }))
  // Everyone types at once.
  await Promise.all(plan.clients.map(async (c, i) => {
    const random = rng(c.seed ?? i + 1)
    const text = docs[i].getText('query')
    for (const ch of c.type ?? '') {
      const at = Math.floor(random() * (text.length + 1))
      text.insert(at, ch)
      await sleep(Math.floor(random() * 4))
    }
  }))
  const texts = () => docs.map((d) => d.getText('query').toString())
  const writers = plan.clients.map((c, i) => i).filter((i) => !plan.clients[i].expect_denied)
  await until(() => writers.every((i) => texts()[i] === texts()[writers[0]]), 'the writers to converge')
  await sleep(plan.settle_ms ?? 300)
  const seen = providers.map((p) => [...p.awareness.getStates().values()]
    .map((s) => s.user?.name).filter(Boolean).sort())
  console.log(JSON.stringify({ texts: texts(), converged: true, awareness: seen, denied }))
} catch (e) {
  const texts = docs.map((d) => d.getText('query').toString())
  console.log(JSON.stringify({ texts, converged: false, error: String(e), denied }))
} finally {
  providers.forEach((p) => p.destroy())
  setTimeout(() => process.exit(0), 100)
}
