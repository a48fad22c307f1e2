// A participant that equivocates, against a session hosted on several
// nodes: it sends two nodes different text under the same Yjs client id and
// clocks, at once. Then an intruder (another principal) adds text under
// that client id through a third node. Then an honest y-websocket client on
// every node reads the text. tests/tests/collab.rs runs it.
//
//   node equivocate.mjs '<json plan>'
//
// The plan: {"urls": ["ws://127.0.0.1:PORT/api/collab/ws", ...] (three),
//   "session": "<id>", "name": "ada", "intruder": "mallory",
//   "versions": ["first", "second"], "client": 4242, "timeout_ms": 20000}
// Prints one JSON line: each observer's text, and what the intruder wrote.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const plan = JSON.parse(process.argv[2])
const timeout = plan.timeout_ms ?? 20000
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// y-protocols framing by hand (lib0 varuints): sync (0), update (2).
function varuint (n) {
  const out = []
  while (n > 0x7f) {
    out.push(0x80 | (n & 0x7f))
    n = Math.floor(n / 128)
  }
  out.push(n)
  return out
}
const updateMessage = (update) => Buffer.from([0, 2, ...varuint(update.length), ...update])

// A document whose edits are made under `client`, starting from `state`.
function author (client, state, text) {
  const doc = new Y.Doc()
  if (state) Y.applyUpdate(doc, state)
  doc.clientID = client
  const before = Y.encodeStateVector(doc)
  doc.getText('query').insert(0, text)
  return Y.encodeStateAsUpdate(doc, before)
}

async function raw (url, name) {
  const ws = new WebSocket(`${url}/${plan.session}?participant=${name}`)
  await new Promise((resolve, reject) => {
    ws.on('open', resolve)
    ws.on('error', reject)
  })
  return ws
}

async function observe (url) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(url, plan.session, doc, {
    WebSocketPolyfill: WebSocket,
    params: { participant: 'observer' },
    disableBc: true
  })
  const deadline = Date.now() + timeout
  while (!provider.synced) {
    if (Date.now() > deadline) throw new Error(`timed out syncing with ${url}`)
    await sleep(20)
  }
  return { doc, provider }
}

try {
  // The same client id and clock range, two contents, two nodes, at once.
  const [a, b] = await Promise.all([raw(plan.urls[0], plan.name), raw(plan.urls[1], plan.name)])
  a.send(updateMessage(author(plan.client, null, plan.versions[0])))
  b.send(updateMessage(author(plan.client, null, plan.versions[1])))
  await sleep(1500)

  // Another principal writes new clocks under the same client id.
  const seen = await observe(plan.urls[2])
  const intruded = 'INTRUDER'
  const m = await raw(plan.urls[2], plan.intruder)
  m.send(updateMessage(author(plan.client, Y.encodeStateAsUpdate(seen.doc), intruded)))
  seen.provider.destroy()
  await sleep(1500)

  const observers = await Promise.all(plan.urls.map(observe))
  await sleep(500)
  const texts = observers.map((o) => o.doc.getText('query').toString())
  console.log(JSON.stringify({ texts, intruded }))
  observers.forEach((o) => o.provider.destroy());
  [a, b, m].forEach((s) => s.close())
  process.exit(0)
} catch (e) {
  console.log(JSON.stringify({ error: String(e) }))
  process.exit(1)
}
