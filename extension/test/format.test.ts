import { strict as assert } from 'node:assert';
import { test } from 'node:test';

import {
  ariaLabel,
  figureParts,
  formatDuration,
  isEarlierSession,
  formatRelative,
  fromUnixSeconds,
  parseIso,
  parseStatus,
  stateInfo,
  summaryParts
} from '../src/format';
import vocabulary from '../src/vocabulary.json';

test('formatDuration writes every duration as durable_nb.vocabulary.fmt_duration does', () => {
  assert.ok(vocabulary.durations.length > 10);
  for (const [seconds, text] of vocabulary.durations as [number, string][]) {
    assert.equal(formatDuration(seconds), text, `${seconds} s`);
  }
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

test('stateInfo reads the shared vocabulary: every state its own word, icon and tone', () => {
  const states = ['replayed', 'recorded', 'running', 'failed', 'crashed', 'not-replayable'];
  const infos = states.map(s => stateInfo(s));
  assert.deepEqual(infos.map(i => i.key), states);
  assert.equal(new Set(infos.map(i => i.label)).size, states.length);
  assert.equal(new Set(infos.map(i => i.icon)).size, states.length);
  for (const [state, look] of Object.entries(vocabulary.looks)) {
    const info = stateInfo(state);
    assert.deepEqual([info.label, info.icon, info.tone, info.description],
      [look.label, look.icon, look.tone, look.description]);
  }
});

test('a recorded cell with a reason re-ran, and the collapsed badge says why', () => {
  const info = stateInfo('recorded', 'input df changed');
  assert.equal(info.key, 're-ran');
  const parts = summaryParts(info, { whenMs: null, duration: 1.04, reason: 'input df changed' }, 0);
  assert.deepEqual(parts, ['input df changed', 'took 1.0 s']);
});

test('a replay shows the three figures of the log: replay, saved, original run', () => {
  const info = stateInfo('replayed');
  assert.deepEqual(figureParts(info, { whenMs: null, duration: 0.42, original: 4.0, saved: 3.58 }),
    ['replayed in 420 ms', 'saved 3.6 s of 4.0 s']);
  assert.deepEqual(figureParts(info, { whenMs: null, duration: null, original: 4.0 }),
    ['recorded run took 4.0 s']);
});

test('a badge of another kernel session, or of none, is from an earlier session', () => {
  const status = parseStatus({ state: 'replayed', session: 'abc' });
  assert.ok(status);
  assert.equal(isEarlierSession(status, 'abc'), false);
  assert.equal(isEarlierSession(status, 'def'), true);
  assert.equal(isEarlierSession(status, null), true);
  const old = parseStatus({ state: 'replayed' });
  assert.ok(old);
  assert.equal(isEarlierSession(old, 'abc'), true);
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
    duration_s: 0.35,
    original_s: 2412,
    saved_s: 2411.65
  });
  assert.ok(status);
  assert.equal(
    ariaLabel(status, now),
    'Durable cell prep: replayed, recorded 7 min ago, replayed in 350 ms, saved 40m 12s of 40m 12s'
  );
  assert.match(ariaLabel(status, now, true), /from an earlier session$/);
  assert.deepEqual(summaryParts(stateInfo('recorded'), { whenMs: null, duration: 0 }, now), ['took 0 ms']);
});
