'use strict';
// Draws the report from the JSON in #report-data: no library, no network. Text from the data
// only ever enters the page as text nodes, never as markup.
(function () {
  const errors = [];
  window.addEventListener('error', (e) => errors.push(String(e.message || e)));
  const consoleError = console.error;
  console.error = (...args) => {
    errors.push(args.map(String).join(' '));
    consoleError.apply(console, args);
  };

  const data = JSON.parse(document.getElementById('report-data').textContent);
  const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#bcbd22', '#7f7f7f'];
  const view = { x: 'step', smoothing: 0.6, logLoss: false };
  const SVG = 'http://www.w3.org/2000/svg';

  // ---- small helpers -------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') node.className = v;
      else if (k === 'style') node.style.cssText = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }
  function num(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return '—';
    const a = Math.abs(v);
    if (a !== 0 && a < 1e-3) return v.toExponential(2);
    for (const [scale, unit] of [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']]) {
      if (a >= 10 * scale) return +(v / scale).toPrecision(3) + unit;
    }
    return String(+v.toPrecision(digits || 4));
  }
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return '—';
    if (seconds < 10) return `${seconds.toFixed(1)}s`;
    const s = Math.round(seconds);
    const [h, m, sec] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
    if (h > 0) return `${h}h${String(m).padStart(2, '0')}m`;
    if (m > 0) return `${m}m${String(sec).padStart(2, '0')}s`;
    return `${sec}s`;
  }
  function show(v) {
    if (v === null || v === undefined) return '(unset)';
    return typeof v === 'string' ? v : JSON.stringify(v);
  }
  // TensorBoard's smoothing: an exponential moving average, debiased at the start.
  function smooth(ys, weight) {
    if (!weight) return ys;
    let last = 0;
    let n = 0;
    return ys.map((y) => {
      if (y === null || !Number.isFinite(y)) return y;
      last = last * weight + (1 - weight) * y;
      n += 1;
      return last / (1 - Math.pow(weight, n));
    });
  }
  // About `count` round values from lo to hi; whole numbers only when `whole`.
  function niceTicks(lo, hi, count, whole) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10, 20].map((m) => m * mag).find((s) => s >= raw && (!whole || Number.isInteger(s)));
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
    return ticks;
  }

  // ---- series: one per recipe and key, each with its own colour ------------------------
  const names = data.recipes.map((r) => r.name);
  // Recipes that share a name (and so a run directory) are told apart by their files.
  const recipeLabel = (r) => (names.indexOf(r.name) !== names.lastIndexOf(r.name) ? `${r.name} (${r.file})` : r.name);
  const colours = new Map();
  data.recipes.forEach((r, i) => colours.set(`${i}`, PALETTE[i % PALETTE.length]));
  function colourOf(recipeIndex, key, current) {
    if (current) return colours.get(`${recipeIndex}`);
    const id = `${recipeIndex}/${key}`;
    if (!colours.has(id)) colours.set(id, PALETTE[colours.size % PALETTE.length]);
    return colours.get(id);
  }

  // Stages by name, in the order they first appear; each with the keys that trained it.
  const stages = [];
  data.recipes.forEach((r, ri) => {
    for (const s of r.stages) {
      let entry = stages.find((e) => e.name === s.name);
      if (!entry) stages.push((entry = { name: s.name, kinds: new Set(), series: [] }));
      entry.kinds.add(s.kind);
      for (const k of s.keys) {
        const label = k.current ? recipeLabel(r) : `${recipeLabel(r)} · earlier key ${k.key.slice(0, 8)}`;
        entry.series.push({ label, colour: colourOf(ri, k.key, k.current), recipe: r, stage: s, key: k, dashed: !k.current });
      }
    }
  });

  // ---- charts --------------------------------------------------------------------------
  const W = 460, H = 240, M = { l: 52, r: 12, t: 10, b: 30 };
  const tooltip = document.getElementById('tooltip');

  // lines: [{ label, colour, xs, ys, raw, dashed, dots }]
  function lineChart(title, lines, opts) {
    const box = el('div', { class: 'chart' }, el('h4', {}, title));
    if (opts && opts.legend) {
      box.append(el('div', { class: 'legend' }, ...lines.map((line) =>
        el('span', { class: 'legend-item' }, el('span', { class: 'swatch', style: `background:${line.colour}` }), `${line.label}  `))));
    }
    const log = opts && opts.log;
    const tf = (y) => (log ? Math.log10(y) : y);
    const usable = (y) => y !== null && Number.isFinite(y) && (!log || y > 0);
    let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
    for (const line of lines) {
      line.xs.forEach((x, i) => {
        for (const y of [line.ys[i], line.raw ? line.raw[i] : null]) {
          if (!usable(y) || x === null) continue;
          x0 = Math.min(x0, x); x1 = Math.max(x1, x);
          y0 = Math.min(y0, tf(y)); y1 = Math.max(y1, tf(y));
        }
      });
    }
    if (!Number.isFinite(x0)) {
      box.append(el('div', { class: 'empty' }, 'no data yet'));
      return box;
    }
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
    const pad = (y1 - y0) * 0.05;
    y0 -= pad; y1 += pad;
    const px = (x) => M.l + ((x - x0) / (x1 - x0)) * (W - M.l - M.r);
    const py = (y) => H - M.b - ((tf(y) - y0) / (y1 - y0)) * (H - M.t - M.b);
    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img' });
    for (const t of niceTicks(y0, y1, 5)) {
      const y = H - M.b - ((t - y0) / (y1 - y0)) * (H - M.t - M.b);
      root.append(svg('line', { class: 'grid', x1: M.l, x2: W - M.r, y1: y, y2: y }));
      const label = svg('text', { x: M.l - 4, y: y + 3, 'text-anchor': 'end' });
      label.textContent = num(log ? Math.pow(10, t) : t, 3);
      root.append(label);
    }
    for (const t of niceTicks(x0, x1, 5, true)) {
      const label = svg('text', { x: px(t), y: H - M.b + 14, 'text-anchor': 'middle' });
      label.textContent = num(t, 3);
      root.append(label, svg('line', { class: 'axis', x1: px(t), x2: px(t), y1: H - M.b, y2: H - M.b + 3 }));
    }
    const xName = svg('text', { x: W - M.r, y: H - 4, 'text-anchor': 'end' });
    xName.textContent = view.x;
    root.append(xName, svg('line', { class: 'axis', x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b }));
    const pathOf = (xs, ys) => {
      let d = '';
      let pen = false;
      xs.forEach((x, i) => {
        if (!usable(ys[i]) || x === null) { pen = false; return; }
        d += `${pen ? 'L' : 'M'}${px(x).toFixed(1)},${py(ys[i]).toFixed(1)}`;
        pen = true;
      });
      return d;
    };
    for (const line of lines) {
      if (line.raw) root.append(svg('path', { d: pathOf(line.xs, line.raw), fill: 'none', stroke: line.colour, 'stroke-opacity': 0.22, 'stroke-width': 1 }));
      const attrs = { d: pathOf(line.xs, line.ys), fill: 'none', stroke: line.colour, 'stroke-width': 1.6, class: 'series' };
      if (line.dashed) attrs['stroke-dasharray'] = typeof line.dashed === 'string' ? line.dashed : '5 3';
      root.append(svg('path', attrs));
      if (line.dots) {
        line.xs.forEach((x, i) => {
          if (usable(line.ys[i]) && x !== null) root.append(svg('circle', { cx: px(x), cy: py(line.ys[i]), r: 2.5, fill: line.colour }));
        });
      }
    }
    // Hover: a cursor at the pointer and, per line, the value at the nearest point.
    const cursor = svg('line', { class: 'cursor', y1: M.t, y2: H - M.b, visibility: 'hidden' });
    const marks = lines.map((line) => svg('circle', { r: 3.5, fill: '#fff', stroke: line.colour, 'stroke-width': 2, visibility: 'hidden' }));
    const hover = svg('rect', { class: 'hover', x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, fill: 'transparent' });
    root.append(cursor, ...marks, hover);
    hover.addEventListener('mousemove', (event) => {
      const rect = root.getBoundingClientRect();
      const sx = ((event.clientX - rect.left) / rect.width) * W;
      const x = x0 + ((sx - M.l) / (W - M.l - M.r)) * (x1 - x0);
      cursor.setAttribute('x1', sx); cursor.setAttribute('x2', sx); cursor.setAttribute('visibility', 'visible');
      tooltip.replaceChildren(el('div', { class: 'x' }, `${title} at ${view.x} ${num(Math.round(x))}`));
      lines.forEach((line, li) => {
        const i = nearest(line.xs, x, (j) => usable(line.ys[j]));
        if (i < 0) { marks[li].setAttribute('visibility', 'hidden'); return; }
        marks[li].setAttribute('cx', px(line.xs[i])); marks[li].setAttribute('cy', py(line.ys[i]));
        marks[li].setAttribute('visibility', 'visible');
        const raw = line.raw && line.raw[i] !== line.ys[i] ? ` (raw ${num(line.raw[i])})` : '';
        tooltip.append(el('div', { class: 'row' }, el('span', { class: 'swatch', style: `background:${line.colour}` }),
          `${line.label}: ${num(line.ys[i])}${raw} at ${view.x} ${num(line.xs[i])}`));
      });
      tooltip.hidden = false;
      tooltip.style.left = `${Math.min(event.clientX + 14, window.innerWidth - tooltip.offsetWidth - 8)}px`;
      tooltip.style.top = `${event.clientY + 14}px`;
    });
    hover.addEventListener('mouseleave', () => {
      tooltip.hidden = true;
      cursor.setAttribute('visibility', 'hidden');
      marks.forEach((m) => m.setAttribute('visibility', 'hidden'));
    });
    box.append(root);
    return box;
  }
  // The index of the usable point whose x is nearest to `x` (xs ascending), or -1.
  function nearest(xs, x, ok) {
    let best = -1;
    let dist = Infinity;
    let lo = 0, hi = xs.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (xs[mid] < x) lo = mid + 1; else hi = mid;
    }
    for (let i = Math.max(0, lo - 64); i < Math.min(xs.length, lo + 64); i++) {
      if (xs[i] !== null && ok(i) && Math.abs(xs[i] - x) < dist) { dist = Math.abs(xs[i] - x); best = i; }
    }
    return best;
  }

  // One chart of a scalar over every series of a stage; `smoothed` draws the EMA over a faint raw line.
  function scalarChart(stage, title, column, smoothed, opts) {
    const lines = stage.series
      .filter((s) => s.key.curves.steps[column])
      .map((s) => {
        const c = s.key.curves.steps;
        const ys = c[column];
        return { label: s.label, colour: s.colour, dashed: s.dashed, xs: c[view.x], ys: smoothed ? smooth(ys, view.smoothing) : ys, raw: smoothed && view.smoothing ? ys : null };
      });
    return lines.length ? lineChart(title, lines, opts) : null;
  }
  // Preference pairs: the share rewarding the chosen answer more, in training and held out.
  function rewardAccuracyChart(stage) {
    const lines = [];
    for (const s of stage.series) {
      const c = s.key.curves.steps;
      if (c.reward_accuracy) lines.push({ label: `${s.label} train`, colour: s.colour, dashed: s.dashed, xs: c[view.x], ys: smooth(c.reward_accuracy, view.smoothing) });
      const e = s.key.curves.eval;
      if ((e.reward_accuracy || []).some((y) => y !== null)) lines.push({ label: `${s.label} held-out`, colour: s.colour, dashed: true, dots: true, xs: e[view.x], ys: e.reward_accuracy });
    }
    return lines.length ? lineChart('preference: reward accuracy (held-out dashed)', lines) : null;
  }
  function lossChart(stage) {
    const lines = [];
    for (const s of stage.series) {
      const c = s.key.curves.steps;
      if (c.loss && c.loss.length) lines.push({ label: `${s.label} train`, colour: s.colour, dashed: s.dashed, xs: c[view.x], ys: smooth(c.loss, view.smoothing), raw: view.smoothing ? c.loss : null });
      const e = s.key.curves.eval;
      if (e.loss.length) lines.push({ label: `${s.label} held-out`, colour: s.colour, dashed: true, dots: true, xs: e[view.x], ys: e.loss });
      if (e.loss_avg.some((y) => y !== null)) lines.push({ label: `${s.label} held-out, averaged weights`, colour: s.colour, dashed: '1 3', dots: true, xs: e[view.x], ys: e.loss_avg });
    }
    return lineChart('loss (train, and held-out dashed; averaged weights dotted)', lines, { log: view.logLoss });
  }

  // A line per source: by source colour for one run, else the run's colour with a dash per
  // source. `pick` gives a series' x values and its values by source.
  function bySourceChart(stage, title, pick, opts) {
    const dashes = [false, '5 3', '1 3', '8 3 1 3'];
    const lines = [];
    for (const s of stage.series) {
      const { xs, bySource, dots } = pick(s);
      Object.entries(bySource || {}).forEach(([name, ys], i) => lines.push({
        label: `${s.label} ${name}`, dots, xs, ys,
        colour: stage.series.length === 1 ? PALETTE[i % PALETTE.length] : s.colour,
        dashed: stage.series.length === 1 ? false : dashes[i % dashes.length],
      }));
    }
    return lines.length ? lineChart(title, lines, { legend: true, ...opts }) : null;
  }
  const heldOutBySource = (s) => ({ xs: s.key.curves.eval[view.x], bySource: s.key.curves.eval.by_source, dots: true });
  const mixShares = (s) => ({ xs: s.key.curves.steps[view.x], bySource: s.key.curves.mix_weights, dots: false });

  // ---- tables --------------------------------------------------------------------------
  function table(head, rows) {
    const t = el('table');
    t.append(el('tr', {}, ...head.map((h) => el('th', {}, h))));
    for (const r of rows) t.append(r instanceof Node ? r : el('tr', {}, ...r.map((c) => (c instanceof Node ? c : el('td', {}, c)))));
    return t;
  }
  function swatch(s) {
    return el('td', {}, el('span', { class: 'swatch', style: `background:${s.colour}` }), s.label);
  }
  function stateText(k) {
    const done = k.curves.last_step;
    const of = k.steps ? ` of ${k.steps}` : '';
    if (k.state === 'partial') return `partial: step ${done === null ? 0 : done}${of}${k.eta_s ? ` · ${duration(k.eta_s)} to go` : ''}`;
    if (k.state === 'done') return `done${k.finished_at ? ` ${k.finished_at}` : ''}`;
    return String(k.state);
  }
  function meanTail(ys) {
    const tail = ys.slice(Math.floor(ys.length / 2)).filter((y) => y !== null && Number.isFinite(y));
    return tail.length ? tail.reduce((a, b) => a + b, 0) / tail.length : null;
  }
  function lastOf(ys) {
    for (let i = ys.length - 1; i >= 0; i--) if (ys[i] !== null && Number.isFinite(ys[i])) return ys[i];
    return null;
  }
  function factsTable(stage) {
    const facts = [
      ['state', (s) => el('span', { class: `state-${s.key.state}` }, stateText(s.key))],
      ['key', (s) => el('span', { class: 'mono' }, s.key.key)],
      ['device', (s) => [...new Set(s.key.sessions.map((x) => (x.world_size > 1 ? `${x.world_size} ranks over ${x.collectives}, rank 0 on ` : '') + x.device + (x.device === 'cpu' ? ` (${x.threads} threads)` : '')))].join(', ') || '—'],
      ['precision', (s) => [...new Set(s.key.sessions.map((x) => x.precision))].join(', ') || (s.key.config && s.key.config[`stages.${stage.name}.precision`]) || '—'],
      ['sessions', (s) => s.key.sessions.map((x) => `${x.started_at} from step ${x.start_step}`).join('; ') || '—'],
      ['greedy soup', (s) => {
        const m = s.key.merge;
        if (!m) return '—';
        const each = m.ingredients.map((i) => `${i.input} ${num(i.held_out_loss)}${i.in_soup ? ' (in)' : ''}`).join(', ');
        return `${m.soup.join(' + ')}: held-out loss ${num(m.held_out_loss)}; ingredients ${each}`;
      }],
      ['time in steps', (s) => duration(s.key.curves.step_time_s)],
      ['tokens trained', (s) => num(lastOf(s.key.curves.steps.tokens || []))],
      ['tokens/s (mean of the later half)', (s) => num(meanTail(s.key.curves.steps.tokens_per_s || []))],
      ['last train loss', (s) => num(lastOf(s.key.curves.steps.loss || []))],
      ['last held-out loss', (s) => num(lastOf(s.key.curves.eval.loss))],
      ['parameters trainable / total', (s) => (s.key.current && s.stage.plan ? `${num(s.stage.plan.params.trainable)} / ${num(s.stage.plan.params.total)}` : '—')],
      ['planned tokens', (s) => (s.key.current && s.stage.plan ? num(s.stage.plan.tokens) : '—')],
      ['compute (FLOPs)', (s) => (s.key.current && s.stage.plan ? s.stage.plan.flops.toExponential(2) : '—')],
      ['peak memory (estimate)', (s) => (s.key.current && s.stage.plan ? `${num(s.stage.plan.memory_bytes)}B` : '—')],
      ['peak memory (measured, resident)', (s) => {
        const mib = s.key.curves.steps.peak_memory_mib;
        return mib && mib.length ? `${num(Math.max(...mib) * 1048576)}B` : '—';
      }],
      ['packing', (s) => {
        const p = s.key.current && s.stage.plan ? s.stage.plan.packing : null;
        if (!p) return '—';
        return p.efficiency === null ? String(p.mode) : `${p.mode}: ${(100 * p.efficiency).toFixed(1)}% of positions hold tokens`;
      }],
      ['learning rate', (s) => {
        const p = s.key.current && s.stage.plan ? s.stage.plan.lr : null;
        return p ? `${p.schedule.kind}, peak ${num(p.peak)}, warmup ${p.schedule.warmup}` : '—';
      }],
    ];
    const merged = stage.series.some((s) => s.key.merge);
    return table(['', ...stage.series.map((s) => s.label)], facts.filter(([name]) => merged || name !== 'greedy soup').map(([name, f]) => [el('th', {}, name), ...stage.series.map((s) => el('td', {}, f(s)))]));
  }
  function dataTable(stage) {
    const rows = [];
    for (const s of stage.series) {
      const trained = s.key.curves.source_tokens || {};
      const total = Object.values(trained).reduce((a, b) => a + b, 0);
      const asked = s.key.current ? s.stage.mix : Object.entries(s.key.config || {})
        .filter(([p]) => p.startsWith(`stages.${stage.name}.data.mix.`))
        .map(([p, w]) => [p.slice(`stages.${stage.name}.data.mix.`.length), w]);
      const askedTotal = asked.reduce((a, [, w]) => a + w, 0) || 1;
      const sources = [...new Set([...asked.map(([n]) => n), ...Object.keys(trained)])];
      for (const name of sources) {
        const a = (asked.find(([n]) => n === name) || [name, 0])[1] / askedTotal;
        const t = total ? (trained[name] || 0) / total : null;
        const bars = el('td', { class: 'bar-cell' },
          el('div', {}, el('span', { class: 'bar asked', style: `width:${(200 * a).toFixed(1)}px` })),
          el('div', {}, el('span', { class: 'bar', style: `width:${(200 * (t || 0)).toFixed(1)}px;background:${s.colour}` })));
        rows.push([swatch(s), name, el('td', { class: 'num' }, `${(100 * a).toFixed(1)}%`),
          el('td', { class: 'num' }, t === null ? '—' : `${(100 * t).toFixed(1)}%`), el('td', { class: 'num' }, num(trained[name] || null)), bars]);
      }
    }
    return table(['run', 'source', 'asked', 'trained', 'tokens in its rows', 'asked (hatched) and trained'], rows);
  }
  function configBlock(stage) {
    const box = el('div');
    for (const s of stage.series) {
      const changes = s.key.changes_to_current;
      if (changes && changes.length) {
        box.append(el('h3', {}, `${s.label} → current: ${changes.length} change(s)`),
          table(['field', 'then', 'now'], changes.map((c) => [el('td', { class: 'mono' }, c.path), show(c.old), show(c.new)])));
      }
      const config = Object.entries(s.key.config || {});
      const changed = new Set((changes || []).map((c) => c.path));
      const rows = config.map(([p, v]) => {
        const row = el('tr', {}, el('td', {}, p), el('td', {}, show(v)));
        if (changed.has(p)) row.className = 'changed';
        return row;
      });
      box.append(el('details', {}, el('summary', {}, `effective config of ${s.label} (${config.length} fields, key ${s.key.key.slice(0, 12)})`), table(['field', 'value'], rows)));
    }
    return box;
  }

  // ---- page ----------------------------------------------------------------------------
  // Above the charts: what differs between the recipes; below them: each recipe's graph and
  // effective config.
  function renderChanges() {
    const root = document.getElementById('changes');
    root.replaceChildren();
    for (const r of data.recipes.filter((x) => x.compared)) {
      const d = r.compared.diff;
      const verdicts = d.stages.filter((s) => s.invalidated).map((s) => s.name);
      root.append(el('h3', {}, `${recipeLabel(r)} against ${r.compared.against}: ${d.changes.length} field change(s)`),
        table(['field', r.compared.against, recipeLabel(r)], d.changes.map((c) => [el('td', { class: 'mono' }, c.path), show(c.old), show(c.new)])),
        el('p', { class: 'muted' }, verdicts.length ? `nodes with other results: ${verdicts.join(', ')}` : 'every node has the same key'));
    }
  }
  function renderRecipes() {
    const root = document.getElementById('recipes');
    root.replaceChildren();
    data.recipes.forEach((r, ri) => {
      root.append(el('h2', {}, el('span', { class: 'swatch', style: `background:${colours.get(`${ri}`)}` }), `recipe ${r.name}`),
        el('p', { class: 'muted' }, `${r.file} · run directory ${r.run_dir}`),
        table(['node', 'kind', 'now'], r.nodes.map((n) => [n.name, n.kind, n.reason])));
      if (r.compared) {
        root.append(el('h3', {}, `against ${r.compared.against} (${r.compared.against_file})`),
          table(['node', 'verdict'], r.compared.diff.stages.map((s) => [s.name,
            s.new ? 'new: runs from scratch' : !s.invalidated ? 'unchanged' : `invalidated by ${[...s.because, ...s.upstream.map((u) => `upstream ${u}`)].join(', ')}`])));
      }
      const cfg = Object.entries(r.config);
      root.append(el('details', {}, el('summary', {}, `effective recipe (${cfg.length} fields, after defaults and inheritance)`),
        table(['field', 'value'], cfg.map(([p, v]) => [el('td', { class: 'mono' }, p), show(v)]))));
    });
  }
  function renderStages() {
    const root = document.getElementById('stages');
    root.replaceChildren();
    for (const stage of stages) {
      const section = el('section', { class: 'stage', 'data-stage': stage.name });
      section.append(el('h2', {}, `stage ${stage.name} (${[...stage.kinds].join(', ')})`));
      section.append(el('div', { class: 'legend' }, ...stage.series.map((s) =>
        el('span', { class: 'legend-item' }, el('span', { class: 'swatch', style: `background:${s.colour}` }), `${s.label}: ${stateText(s.key)}  `))));
      const charts = [
        lossChart(stage),
        bySourceChart(stage, 'held-out loss by source', heldOutBySource, { log: view.logLoss }),
        bySourceChart(stage, 'online mixing: each source\'s share of the draws', mixShares),
        scalarChart(stage, 'sequence length', 'seq_len', false),
        scalarChart(stage, 'learning rate', 'lr', false),
        scalarChart(stage, 'gradient norm (before clipping)', 'grad_norm', true),
        scalarChart(stage, 'tokens/s', 'tokens_per_s', true),
        scalarChart(stage, 'distillation: cross-entropy on the data', 'ce_loss', true),
        scalarChart(stage, 'distillation: KD term', 'kd_loss', true),
        rewardAccuracyChart(stage),
        scalarChart(stage, 'preference: reward margin, chosen − rejected', 'reward_margin', true),
        scalarChart(stage, 'KTO: KL estimate', 'kl', true),
        scalarChart(stage, 'f16 loss scale', 'loss_scale', false, { log: true }),
      ].filter(Boolean);
      section.append(el('div', { class: 'charts' }, ...charts));
      section.append(el('h3', {}, 'data trained per source, against the asked mix'), dataTable(stage));
      section.append(el('h3', {}, 'facts'), factsTable(stage));
      section.append(el('h3', {}, 'config'), configBlock(stage));
      root.append(section);
    }
    document.body.dataset.charts = String(document.querySelectorAll('.chart svg').length);
  }
  function renderLegend() {
    document.getElementById('legend').replaceChildren(...data.recipes.map((r, ri) =>
      el('span', { class: 'legend-item' }, el('span', { class: 'swatch', style: `background:${colours.get(`${ri}`)}` }), `${recipeLabel(r)} (${r.file})`)));
  }

  function selfTest() {
    // Hover the middle of the first chart as a pointer would, and leave what the tooltip said.
    const hover = document.querySelector('.chart svg .hover');
    if (!hover) return;
    const box = hover.getBoundingClientRect();
    hover.dispatchEvent(new MouseEvent('mousemove', { clientX: box.left + box.width / 2, clientY: box.top + box.height / 2, bubbles: true }));
    document.body.dataset.selftest = tooltip.hidden ? '' : tooltip.textContent;
  }

  try {
    document.getElementById('generated').textContent = `generated ${data.generated_at} by recipe ${data.version}`;
    renderLegend();
    renderChanges();
    renderStages();
    renderRecipes();
    const controls = [['x-axis', 'change', (e) => { view.x = e.target.value; }],
      ['smoothing', 'input', (e) => { view.smoothing = +e.target.value; document.getElementById('smoothing-value').textContent = view.smoothing.toFixed(2); }],
      ['log-loss', 'change', (e) => { view.logLoss = e.target.checked; }]];
    for (const [id, event, set] of controls) document.getElementById(id).addEventListener(event, (e) => { set(e); renderStages(); });
    if (location.hash === '#selftest') selfTest();
  } catch (e) {
    errors.push(String(e && e.stack ? e.stack : e));
  }
  document.body.dataset.errors = errors.join(' | ');
  document.body.dataset.status = errors.length ? 'error' : 'ok';
})();
