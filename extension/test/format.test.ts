import { strict as assert } from 'node:assert';
import { test } from 'node:test';

import {
  ariaLabel,
  formatDuration,
  formatRelative,
  fromUnixSeconds,
  parseIso,
  parseStatus,
  stateInfo,
  summaryParts
} from '../src/format';

test('formatDuration covers sub-second to days', () => {
  assert.equal(formatDuration(0.01), '<0.1 s');
  assert.equal(formatDuration(2.44), '2.4 s');
  assert.equal(formatDuration(12.4), '12 s');
  assert.equal(formatDuration(2412), '40m 12s');
  assert.equal(formatDuration(3600 * 2 + 5 * 60), '2h 05m');
  assert.equal(formatDuration(86400 * 3 + 3600 * 4 + 10), '3d 4h');
});

test('formatDuration returns empty text for missing or invalid numbers', () => {
  assert.equal(formatDuration(null), '');
  assert.equal(formatDuration(undefined), '');
  assert.equal(formatDuration(Number.NaN), '');
  assert.equal(formatDuration(-1), '');
});

test('formatRelative counts back from now and tolerates clock skew', () => {
  const now = Date.UTC(2026, 10, 26, 14, 0, 0);
  assert.equal(formatRelative(now - 3000, now), 'just now');
  assert.equal(formatRelative(now + 5000, now), 'just now');
  assert.equal(formatRelative(now - 42000, now), '42 s ago');
  assert.equal(formatRelative(now - 5 * 60000, now), '5 min ago');
  assert.equal(formatRelative(now - 3 * 3600000, now), '3 h ago');
  assert.equal(formatRelative(now - 2 * 86400000, now), '2 d ago');
  assert.match(formatRelative(now - 30 * 86400000, now), /^2026-10-2\d \d\d:\d\d$/);
  assert.equal(formatRelative(null, now), '');
});

test('stateInfo gives every state a distinct word and icon', () => {
  const states = ['replayed', 'recorded', 'running', 'failed', 'crashed', 'not-replayable'];
  const infos = states.map(s => stateInfo(s));
  assert.deepEqual(
    infos.map(i => i.key),
    ['replayed', 'recorded', 'running', 'failed', 'crashed', 'not-replayable']
  );
  assert.equal(new Set(infos.map(i => i.label)).size, states.length);
  // failed and crashed share the cross, but every other icon is unique.
  assert.equal(new Set(infos.map(i => i.icon)).size, states.length - 1);
  assert.equal(stateInfo('not-replayable').label, 'not replayable');
});

test('a recorded cell with a reason re-ran, and says why', () => {
  const info = stateInfo('recorded', 'input df changed');
  assert.equal(info.key, 're-ran');
  assert.equal(info.description, 're-ran because input df changed');
  assert.equal(stateInfo('stale').key, 're-ran');
});

test('an unknown state is shown, not hidden', () => {
  const info = stateInfo('archived');
  assert.equal(info.key, 'unknown');
  assert.equal(info.label, 'archived');
  assert.equal(info.tone, 'neutral');
});

test('parseStatus keeps known fields and drops wrong types', () => {
  const s = parseStatus({
    version: 1,
    state: 'replayed',
    cell: 'prep',
    duration_s: 'slow',
    saved_s: 2412,
    changed: ['input df', 3],
    recorded_at: '2026-11-26T14:03:00+00:00'
  });
  assert.ok(s);
  assert.equal(s.cell, 'prep');
  assert.equal(s.duration_s, null);
  assert.equal(s.saved_s, 2412);
  assert.deepEqual(s.changed, ['input df']);
  assert.equal(parseStatus({ cell: 'x' }), null);
  assert.equal(parseStatus('replayed'), null);
  assert.equal(parseStatus([1]), null);
});

test('time conversions', () => {
  assert.equal(parseIso('2026-11-26T14:03:00+00:00'), Date.UTC(2026, 10, 26, 14, 3, 0));
  assert.equal(parseIso('not a date'), null);
  assert.equal(parseIso(null), null);
  assert.equal(fromUnixSeconds(1.5), 1500);
  assert.equal(fromUnixSeconds(null), null);
});

test('summary and accessible name read without colour', () => {
  const now = Date.UTC(2026, 10, 26, 14, 10, 0);
  const status = parseStatus({
    version: 1,
    state: 'replayed',
    cell: 'prep',
    recorded_at: '2026-11-26T14:03:00+00:00',
    duration_s: 2412,
    saved_s: 2412
  });
  assert.ok(status);
  assert.equal(
    ariaLabel(status, now),
    'Durable cell prep: replayed, replayed from the durable log instead of recomputing, ' +
      'recorded 7 min ago, took 40m 12s, saved 40m 12s'
  );
  assert.deepEqual(summaryParts(stateInfo('recorded'), { whenMs: null, duration: 0, saved: 0 }, now), [
    'took <0.1 s'
  ]);
});
