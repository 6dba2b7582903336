import { startChildServer } from '../test/helpers/child-server.ts';
import { startTestServer } from '../test/helpers/server.ts';
const u1 = await startChildServer(['--lora-rank', '4', '--no-adapt', '--threads', '1', '--db', '/tmp/dbgu1.sqlite']);
console.log(u1.url);
console.log(await (await fetch(`${u1.url}/v1/models`)).text());
const front = await startTestServer(
  { upstreams: [`${u1.url}/v1`], loraRank: 4, adapt: true, updateEvery: 100000, upstreamProbeMs: 200 },
  { logger: undefined },
);
await new Promise((r) => setTimeout(r, 3000));
console.log(front.pipeline.adaptation.refused, JSON.stringify(front.pipeline.upstreams!.status()));
await front.close();
await u1.stop();
process.exit(0);
