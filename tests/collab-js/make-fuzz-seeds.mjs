// Seeds for the collab_frame fuzz target: real y-protocols frames made by npm yjs
// (updates with text, formats, maps, arrays, nested types, binary; sync steps 1 and 2;
// awareness; an awareness query).
//   node tests/collab-js/make-fuzz-seeds.mjs fuzz/seeds/collab_frame
import * as Y from 'yjs'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as encoding from 'lib0/encoding'
import fs from 'fs'
const out = process.argv[2]
const doc = new Y.Doc()
const text = doc.getText('query')
const updates = []
doc.on('update', (u) => updates.push(u))
text.insert(0, 'sum(rate(http_requests_total[5m]))')
text.delete(4, 5)
text.insert(3, ' by (job)', { bold: true })
doc.getMap('meta').set('language', 'sql')
doc.getArray('annotations').push([{ author: 'ada', start: 1, end: 2, text: 'x', tags: [1, 2.5, null, true, 'z', { n: [1] }] }])
doc.getMap('meta').set('blob', new Uint8Array([1, 2, 3]))
const sub = doc.getMap('meta').set('nested', new Y.Map())
sub.set('k', new Y.Array())
const frame = (fn) => { const e = encoding.createEncoder(); fn(e); return encoding.toUint8Array(e) }
let n = 0
const save = (bytes) => fs.writeFileSync(`${out}/seed-${n++}`, bytes)
for (const u of updates) save(frame((e) => { encoding.writeVarUint(e, 0); syncProtocol.writeUpdate(e, u) }))
save(frame((e) => { encoding.writeVarUint(e, 0); syncProtocol.writeSyncStep1(e, doc) }))
save(frame((e) => { encoding.writeVarUint(e, 0); syncProtocol.writeSyncStep2(e, doc) }))
const aw = new awarenessProtocol.Awareness(doc)
aw.setLocalState({ user: { name: 'ada', color: '#f00' }, cursor: { anchor: 3 } })
save(frame((e) => { encoding.writeVarUint(e, 1); encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(aw, [doc.clientID])) }))
save(frame((e) => { encoding.writeVarUint(e, 3) }))
console.log(`${n} seeds in ${out}`)
process.exit(0)
