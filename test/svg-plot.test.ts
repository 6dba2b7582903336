// The benchmark plots: charts stacked into one SVG keep their sizes and follow one another.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { linePlot, stackPlots } from '../src/util/svg-plot.ts';

/** A chart of one two-point series, of the given size. */
const chart = (name: string, width: number, height: number) =>
  linePlot(
    [
      {
        name,
        points: [
          [0, 0.5],
          [10, 0.7],
        ],
      },
    ],
    { title: name, xLabel: 'questions', width, height },
  );

test('stackPlots places each chart under the one before, in one SVG as tall as all of them', () => {
  const svg = stackPlots([chart('accuracy', 700, 300), chart('ECE', 720, 400)]);
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

test('axis ticks write whole numbers as they are (question counts), others to four digits', () => {
  const svg = linePlot(
    [
      {
        name: 's',
        points: [
          [0, 0.12345],
          [10000, 0.5],
        ],
      },
    ],
    { title: 't', xLabel: 'q' },
  );
  assert.ok(svg.includes('>10000<'), 'a whole-number tick, not 1.0e+4');
  assert.ok(!/e\+/.test(svg));
});
