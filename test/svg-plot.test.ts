// The benchmark plots: charts stacked into one SVG keep their sizes and follow one another.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { linePlot, stackPlots } from '../src/util/svg-plot.ts';

test('stackPlots places each chart under the one before, in one SVG as tall as all of them', () => {
  const a = linePlot(
    [
      {
        name: 'accuracy',
        points: [
          [0, 0.5],
          [10, 0.7],
        ],
      },
    ],
    { title: 'a', xLabel: 'q', width: 700, height: 300 },
  );
  const b = linePlot(
    [
      {
        name: 'ECE',
        points: [
          [0, 0.1],
          [10, 0.2],
        ],
      },
    ],
    { title: 'b', xLabel: 'q', width: 720, height: 400 },
  );
  const svg = stackPlots([a, b]);
  assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg" width="720" height="700" viewBox="0 0 720 700">/);
  assert.deepEqual(
    [...svg.matchAll(/<svg x="0" y="(\d+)" width="(\d+)"/g)].map((m) => [Number(m[1]), Number(m[2])]),
    [
      [0, 700],
      [300, 720],
    ],
  );
  assert.equal(svg.match(/<svg/g)!.length, 3);
  assert.equal(svg.match(/<\/svg>/g)!.length, 3);
  assert.throws(() => stackPlots(['<g/>']), /not a linePlot chart/);
});
