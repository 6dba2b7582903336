// The dashboard page: a snapshot and then deltas from /dashboard/events (server-sent events),
// drawn with uPlot; the control panel calls the /admin routes with the token typed in, kept
// in sessionStorage (this tab only). Everything from the server is set as text, never HTML:
// questions are what anyone asked.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const KEY = 'ttrl.apiKey';
  const TOKEN = 'ttrl.adminToken';
  const SERIES_POINTS = 300;
  const COLORS = { promoted: '#1f9d55', rejected: '#d64545', other: '#9aa1ae', accent: '#3a6fd8', p99: '#d89b00' };

  const state = {
    version: null,
    versions: [],
    updates: [],
    questions: [],
    series: [[], [], [], []],
    stats: null,
    anchorShift: null,
    windows: null,
    calibration: null,
  };
  let source = null;
  let retryTimer = null;

  // ---------- formatting ----------
  const fmtTime = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });
  const fmtMs = (v) => (v === null || v === undefined ? '–' : v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`);
  const fmtPct = (v) => (v === null || v === undefined ? '–' : `${Math.round(v * 100)}%`);
  const fmtShift = (v) => (v === null || v === undefined ? '–' : (v >= 0 ? '+' : '') + v.toFixed(3));
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const setText = (id, text) => {
    const e = $(id);
    if (e.textContent !== text) e.textContent = text;
  };

  // ---------- charts ----------
  const charts = {};
  const chartHeight = 170;
  const widthOf = (id) => Math.max(200, $(id).clientWidth);

  // The x ranges come from the data itself: uPlot widens a single point's range to years.
  const lastOf = (u) => {
    const xs = u.data[0];
    return xs.length ? xs[xs.length - 1] : Date.now() / 1000;
  };

  // An axis of shares, 0 to 100%.
  const shareAxis = { splits: () => [0, 0.2, 0.4, 0.6, 0.8, 1], values: (_u, vals) => vals.map((v) => `${Math.round(v * 100)}%`) };

  // Where accuracy equals confidence: a calibrated server's bars reach it.
  function drawDiagonal(u) {
    const { ctx } = u;
    const x = (v) => u.valToPos(v, 'x', true);
    const y = (v) => u.valToPos(v, 'y', true);
    ctx.save();
    ctx.setLineDash([5 * uPlot.pxRatio, 4 * uPlot.pxRatio]);
    ctx.strokeStyle = COLORS.other;
    ctx.lineWidth = uPlot.pxRatio;
    ctx.beginPath();
    ctx.moveTo(x(0), y(0));
    ctx.lineTo(x(1), y(1));
    ctx.stroke();
    ctx.restore();
  }

  function makeCharts() {
    // The last five minutes, one point a second.
    const time = { x: { time: true, range: (u) => [lastOf(u) - SERIES_POINTS, lastOf(u)] } };
    charts.qps = new uPlot(
      {
        width: widthOf('chart-qps'),
        height: chartHeight,
        scales: { ...time, y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.15)] } },
        legend: { show: false },
        series: [{}, { label: 'questions/s', stroke: COLORS.accent, fill: 'rgba(58,111,216,0.12)', width: 2, points: { show: false } }],
        axes: [{}, { size: 44 }],
      },
      [[], []],
      $('chart-qps'),
    );
    charts.latency = new uPlot(
      {
        width: widthOf('chart-latency'),
        height: chartHeight,
        scales: { ...time, y: { range: (_u, _min, max) => [0, Math.max(10, (max ?? 0) * 1.15)] } },
        series: [
          {},
          { label: 'p50', stroke: COLORS.accent, width: 2, spanGaps: false, points: { show: false }, value: (_u, v) => fmtMs(v) },
          { label: 'p99', stroke: COLORS.p99, width: 2, spanGaps: false, points: { show: false }, value: (_u, v) => fmtMs(v) },
        ],
        axes: [{}, { size: 50 }],
      },
      [[], [], []],
      $('chart-latency'),
    );
    const centers = Array.from({ length: 10 }, (_, i) => (i + 0.5) / 10);
    charts.confidence = new uPlot(
      {
        width: widthOf('chart-confidence'),
        height: chartHeight,
        scales: { x: { time: false, range: [0, 1] }, y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.15)] } },
        legend: { show: false },
        cursor: { show: false },
        series: [
          {},
          { label: 'answers', fill: 'rgba(58,111,216,0.55)', stroke: COLORS.accent, paths: uPlot.paths.bars({ size: [0.85, 60] }), points: { show: false } },
        ],
        axes: [shareAxis, { size: 44 }],
      },
      [centers, new Array(10).fill(0)],
      $('chart-confidence'),
    );
    charts.calibration = new uPlot(
      {
        width: widthOf('chart-calibration'),
        // As tall as its three numbers beside it.
        height: 250,
        scales: { x: { time: false, range: [0, 1] }, y: { range: [0, 1] } },
        legend: { show: false },
        cursor: { show: false },
        series: [
          {},
          { label: 'accuracy', fill: 'rgba(31,157,85,0.45)', stroke: COLORS.promoted, paths: uPlot.paths.bars({ size: [0.85, 60] }), points: { show: false } },
        ],
        axes: [
          { ...shareAxis, label: 'confidence', labelSize: 14 },
          { ...shareAxis, size: 44, label: 'accuracy', labelSize: 14 },
        ],
        hooks: { draw: [drawDiagonal] },
      },
      [centers, new Array(10).fill(null)],
      $('chart-calibration'),
    );
    const point = (color) => ({
      stroke: color,
      width: 0,
      paths: () => null,
      points: { show: true, size: 10, fill: color, stroke: color },
      value: (_u, v) => fmtShift(v),
    });
    charts.updates = new uPlot(
      {
        width: widthOf('chart-updates'),
        height: 150,
        scales: {
          x: {
            time: true,
            // The updates shown, and at least the last ten minutes.
            range: (u) => {
              const xs = u.data[0];
              const now = Date.now() / 1000;
              return [Math.min(xs.length ? xs[0] : now, now - 600) - 10, Math.max(lastOf(u), now) + 10];
            },
          },
          y: {
            range: (_u, min, max) => {
              const m = Math.max(0.05, Math.abs(min ?? 0), Math.abs(max ?? 0)) * 1.3;
              return [-m, m];
            },
          },
        },
        series: [
          {},
          { label: 'promoted', ...point(COLORS.promoted) },
          { label: 'rejected', ...point(COLORS.rejected) },
          { label: 'skipped / failed', ...point(COLORS.other) },
        ],
        axes: [{}, { size: 50, label: 'anchor shift', labelSize: 14 }],
      },
      [[], [], [], []],
      $('chart-updates'),
    );
    const resize = new ResizeObserver(() => {
      for (const [name, id] of [
        ['qps', 'chart-qps'],
        ['latency', 'chart-latency'],
        ['confidence', 'chart-confidence'],
        ['calibration', 'chart-calibration'],
        ['updates', 'chart-updates'],
      ]) {
        const w = widthOf(id);
        if (charts[name].width !== w) charts[name].setSize({ width: w, height: charts[name].height });
      }
    });
    for (const id of ['chart-qps', 'chart-latency', 'chart-confidence', 'chart-calibration', 'chart-updates']) resize.observe($(id));
  }

  // ---------- rendering ----------
  function renderStats() {
    const s = state.stats;
    if (!s) return;
    setText('qps', s.qps.toFixed(s.qps < 10 ? 1 : 0));
    setText('p50', fmtMs(s.p50_ms));
    setText('p99', fmtMs(s.p99_ms));
    setText('answered', String(s.answered));
    setText('confidence-mean', fmtPct(s.confidence_mean));
    setText('queue', `${s.queue_depth} · ${s.pending_experiences}`);
    const a = $('adaptation');
    a.dataset.state = s.adaptation;
    setText('adaptation', `adaptation: ${s.adaptation}`);
    setText('confidence-n', `last ${s.confidence_n} answers`);
    setText('why-no-update', s.why_no_update_yet ? `No update yet: ${s.why_no_update_yet}.` : '');
    const fleet = $('fleet');
    fleet.hidden = !s.fleet;
    if (s.fleet) {
      const list = s.fleet.frontends.map((f) => `${f.id}${f.leader ? ' (leader)' : ''} v${f.serving_version}`).join(', ');
      const behind = s.fleet.versions_behind ? `; this front-end is ${s.fleet.versions_behind} version(s) behind` : '';
      setText(
        'fleet',
        `Fleet: ${s.fleet.frontends.length} front-end(s): ${list || 'none seen yet'}; this is ${s.fleet.frontend}${s.fleet.leading ? ', the leader' : ''}${behind}.`,
      );
    }
    const upstreams = $('upstreams');
    upstreams.hidden = !s.upstreams;
    if (s.upstreams) {
      const ms = (x) => (x === null ? '–' : `${x} ms`);
      const list = s.upstreams.map(
        (u) =>
          `${u.url} ${u.state}${u.reason ? ` (${u.reason})` : ''}, p50 ${ms(u.p50_ms)}, p99 ${ms(u.p99_ms)}, ${u.errors} errors, ${u.outstanding} in flight`,
      );
      setText('upstreams', `Sampled on ${s.upstreams.length} upstream(s): ${list.join('; ')}.`);
    }
    charts.confidence.setData([charts.confidence.data[0], s.confidence]);
  }

  // Shown once a labelled answer has been seen; a server asked without labels shows nothing of it.
  function renderCalibration() {
    const c = state.calibration;
    $('calibration').hidden = !c;
    if (!c) return;
    const kept = state.windows ? state.windows.calibration_answers : Infinity;
    setText('calibration-n', c.answers >= kept ? `last ${kept} labelled answers` : `${c.answers} labelled answer${c.answers === 1 ? '' : 's'}`);
    setText('calibration-ece', c.ece === null ? '–' : c.ece.toFixed(3));
    setText('calibration-accuracy', fmtPct(c.accuracy));
    setText('calibration-confidence', fmtPct(c.mean_confidence));
    charts.calibration.setData([c.bins.map((b) => (b.lo + b.hi) / 2), c.bins.map((b) => b.accuracy)]);
  }

  function renderSeries() {
    const [t, qps, p50, p99] = state.series;
    charts.qps.setData([t, qps]);
    charts.latency.setData([t, p50, p99]);
  }

  function renderVersion() {
    const v = state.version;
    setText('serving-version', v === null ? '–' : String(v));
    setText('anchor-shift', fmtShift(state.anchorShift));
    const serving = state.versions.find((r) => r.version === v);
    const parent = serving ? serving.parent : null;
    const rollback = $('btn-rollback');
    rollback.dataset.target = parent === null ? '' : String(parent);
    rollback.textContent = parent === null ? 'Roll back' : `Roll back to v${parent}`;
    // Versions with weights to serve: the base, the one serving, and those it replaced.
    const select = $('version-select');
    const chosen = select.value;
    const servable = state.versions.filter((r) => r.version === 0 || r.status === 'active' || r.status === 'retired').reverse();
    select.replaceChildren(
      ...servable.map((r) => {
        const o = el(
          'option',
          '',
          `v${r.version}${r.version === v ? ' (serving)' : r.version === 0 ? ' (base model)' : ''}${r.anchor_shift !== null ? `, anchor ${fmtShift(r.anchor_shift)}` : ''}`,
        );
        o.value = String(r.version);
        return o;
      }),
    );
    if (servable.some((r) => String(r.version) === chosen)) select.value = chosen;
    else if (parent !== null) select.value = String(parent);
    updateButtons();
  }

  function renderUpdates() {
    const rows = state.updates.slice().reverse();
    $('updates-empty').hidden = rows.length > 0;
    $('updates').replaceChildren(
      ...rows.map((u) => {
        const tr = el('tr');
        tr.dataset.outcome = u.outcome;
        tr.append(el('td', 'num', fmtTime(u.finished_at ?? u.started_at)));
        const td = el('td');
        td.append(el('span', `badge ${u.outcome}`, u.outcome));
        tr.append(td);
        tr.append(el('td', 'num', u.version === null ? '–' : `v${u.version}`));
        tr.append(el('td', 'num', fmtShift(u.anchor_shift)));
        tr.append(el('td', 'num', u.seconds === null ? '–' : `${u.seconds.toFixed(1)} s`));
        const reason = el('td', 'reason', u.reason ?? '');
        if (u.reason) reason.title = u.reason;
        tr.append(reason);
        return tr;
      }),
    );
    const done = state.updates.filter((u) => u.finished_at !== null).sort((a, b) => a.finished_at - b.finished_at);
    const y = (u) => (u.anchor_shift === null ? 0 : u.anchor_shift);
    charts.updates.setData([
      done.map((u) => u.finished_at / 1000),
      done.map((u) => (u.outcome === 'promoted' ? y(u) : null)),
      done.map((u) => (u.outcome === 'rejected' ? y(u) : null)),
      done.map((u) => (u.outcome === 'skipped' || u.outcome === 'failed' ? y(u) : null)),
    ]);
  }

  function voteBar(q) {
    const bar = el('div', 'votes');
    // The majority answer first (the server lists it first), then by votes.
    const parts = q.votes.map(([label, n], i) => ({ label, n, cls: label === q.answer ? 'top' : label === '' ? 'none' : `v${Math.min(Math.max(i, 1), 5)}` }));
    if (q.other > 0) parts.push({ label: 'other', n: q.other, cls: 'other' });
    for (const p of parts) {
      const s = el('span', p.cls, p.label === '' ? '∅' : p.label);
      s.style.flexGrow = String(p.n);
      s.title = `${p.label === '' ? '(no answer)' : p.label}: ${p.n} of ${q.total} votes`;
      bar.append(s);
    }
    return bar;
  }

  function renderQuestions() {
    const qs = state.questions.slice().reverse();
    $('questions-empty').hidden = qs.length > 0;
    $('questions').replaceChildren(
      ...qs.map((q) => {
        const li = el('li');
        li.dataset.id = String(q.id);
        const text = el('div', 'q-text');
        text.title = q.question;
        text.append(document.createTextNode(`${q.question} `));
        text.append(el('span', 'q-answer', q.answer === null ? '(no answer)' : `→ ${q.answer === '' ? '∅' : q.answer}`));
        li.append(text, voteBar(q), el('div', 'q-meta', `${fmtPct(q.confidence)} · v${q.version} · ${fmtMs(q.latency_ms)}`));
        return li;
      }),
    );
  }

  // ---------- the stream ----------
  function applySnapshot(s) {
    state.windows = s.windows;
    state.version = s.version;
    state.versions = s.versions;
    state.updates = s.updates;
    state.questions = s.questions;
    state.series = s.series;
    state.stats = s.stats;
    state.anchorShift = s.anchor_shift;
    state.calibration = s.calibration;
    setText('rate-window', `${s.windows.rate_s} s`);
    setText('latency-window', `${s.windows.latency_s} s`);
    renderStats();
    renderSeries();
    renderVersion();
    renderUpdates();
    renderQuestions();
    renderCalibration();
  }

  function setConn(st, text) {
    const c = $('conn');
    c.dataset.state = st;
    c.textContent = text ?? st;
  }

  const keyQuery = () => {
    const k = sessionStorage.getItem(KEY);
    return k ? `?key=${encodeURIComponent(k)}` : '';
  };

  function retry() {
    setConn('down', 'reconnecting');
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, 3000);
  }

  async function connect() {
    clearTimeout(retryTimer);
    if (source) source.close();
    source = null;
    setConn('connecting');
    let res;
    try {
      // The snapshot first: it says whether an API key is needed, which EventSource cannot.
      res = await fetch(`/dashboard/state${keyQuery()}`, { cache: 'no-store' });
    } catch {
      return retry();
    }
    if (res.status === 401) {
      $('key-panel').hidden = false;
      setConn('down', 'API key needed');
      return;
    }
    if (!res.ok) return retry();
    $('key-panel').hidden = true;
    applySnapshot(await res.json());
    const es = new EventSource(`/dashboard/events${keyQuery()}`);
    source = es;
    const on = (name, f) => es.addEventListener(name, (e) => f(JSON.parse(e.data)));
    es.addEventListener('open', () => setConn('live'));
    on('snapshot', applySnapshot);
    on('stats', (s) => {
      state.stats = s;
      const t = Math.round(s.at / 1000);
      const series = state.series;
      if (series[0].length && series[0][series[0].length - 1] >= t) return renderStats();
      series[0].push(t);
      series[1].push(s.qps);
      series[2].push(s.p50_ms);
      series[3].push(s.p99_ms);
      if (series[0].length > SERIES_POINTS) for (const col of series) col.shift();
      renderStats();
      renderSeries();
    });
    on('questions', (m) => {
      state.questions = state.questions.concat(m.questions).slice(-30);
      if (state.stats) {
        state.stats.answered = m.answered;
        setText('answered', String(m.answered));
      }
      renderQuestions();
    });
    on('update', (u) => {
      const i = state.updates.findIndex((x) => x.id === u.id);
      if (i >= 0) state.updates[i] = u;
      else state.updates.push(u);
      if (state.updates.length > 100) state.updates.shift();
      if (u.anchor_shift_now !== undefined) state.anchorShift = u.anchor_shift_now;
      renderUpdates();
      renderVersion();
    });
    on('calibration', (c) => {
      state.calibration = c;
      renderCalibration();
    });
    on('version', (m) => {
      state.version = m.version;
      state.versions = m.versions;
      renderVersion();
    });
    on('versions', (m) => {
      state.versions = m.versions;
      renderVersion();
    });
    es.addEventListener('error', () => {
      // EventSource retries by itself unless the server answered with an error.
      if (es.readyState === EventSource.CLOSED) retry();
      else setConn('connecting', 'reconnecting');
    });
  }

  // ---------- control ----------
  const token = () => sessionStorage.getItem(TOKEN);
  let busy = false;

  function updateButtons() {
    const has = !!token();
    for (const b of document.querySelectorAll('[data-admin]')) b.disabled = !has || busy;
    const rb = $('btn-rollback');
    if (!rb.dataset.target) rb.disabled = true;
    if (!$('version-select').value) $('btn-activate').disabled = true;
    setText('token-state', has ? 'Admin token set for this tab.' : 'Type the admin token (--admin-token) to use these; it is kept in this tab only.');
  }

  function showResult(text, error) {
    const r = $('admin-result');
    r.textContent = text;
    r.classList.toggle('error', !!error);
  }

  async function admin(method, path, label) {
    busy = true;
    updateButtons();
    showResult(`${label}…`);
    try {
      const res = await fetch(`/admin${path}`, { method, headers: { Authorization: `Bearer ${token()}` }, cache: 'no-store' });
      const body = await res.json().catch(() => null);
      if (!res.ok) {
        showResult(`${label}: ${body && body.message ? body.message : `HTTP ${res.status}`}`, true);
        return null;
      }
      showResult(`${label}: ${summary(body)}`);
      return body;
    } catch (e) {
      showResult(`${label}: ${e.message}`, true);
      return null;
    } finally {
      busy = false;
      updateButtons();
    }
  }

  function summary(body) {
    if (!body || typeof body !== 'object') return 'done';
    if (body.outcome)
      return `${body.outcome}${body.version !== null && body.version !== undefined ? ` (v${body.version})` : ''}${body.reason ? `: ${body.reason}` : ''}`;
    if (body.adaptation) return `adaptation ${body.adaptation}`;
    if (body.model_version !== undefined) return `serving v${body.model_version}`;
    return 'done';
  }

  function wireControls() {
    $('token-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const t = $('admin-token').value.trim();
      if (!t) return;
      sessionStorage.setItem(TOKEN, t);
      $('admin-token').value = '';
      updateButtons();
      await admin('GET', '/status', 'token check');
    });
    $('token-forget').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN);
      showResult('');
      updateButtons();
    });
    $('key-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const k = $('api-key').value.trim();
      if (k) sessionStorage.setItem(KEY, k);
      else sessionStorage.removeItem(KEY);
      $('api-key').value = '';
      connect();
    });
    $('btn-pause').addEventListener('click', () => admin('POST', '/adaptation/pause', 'pause'));
    $('btn-resume').addEventListener('click', () => admin('POST', '/adaptation/resume', 'resume'));
    $('btn-update').addEventListener('click', () => admin('POST', '/adaptation/update', 'update'));
    $('btn-rollback').addEventListener('click', () => {
      const v = $('btn-rollback').dataset.target;
      if (v) admin('POST', `/versions/${v}/activate`, `roll back to v${v}`);
    });
    $('btn-activate').addEventListener('click', () => {
      const v = $('version-select').value;
      if (v) admin('POST', `/versions/${v}/activate`, `serve v${v}`);
    });
    $('version-select').addEventListener('change', updateButtons);
  }

  makeCharts();
  wireControls();
  updateButtons();
  connect();
})();
