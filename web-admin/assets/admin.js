/* Whipcord admin panel. One plain script for three pages, picked by <body data-page>: the panel
   itself (a small single-page app routed on location.pathname), the login page and the API docs
   page. Nothing is inline in the HTML, so the pages also work under script-src 'self'. */
'use strict';
(function () {
  // ---- DOM and formatting helpers ----------------------------------------------------------

  const $ = (sel, root) => (root || document).querySelector(sel);
  const enc = encodeURIComponent;

  /** h('tag.class', {attr: value, onclick: fn, testid: 'x'}, ...children) */
  function h(tag, attrs, ...children) {
    const [name, ...classes] = tag.split('.');
    const el = document.createElement(name);
    if (classes.length) el.className = classes.join(' ');
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'testid') el.dataset.testid = v;
      else el.setAttribute(k, v === true ? '' : v);
    }
    add(el, children);
    return el;
  }
  function add(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }
  const setText = (el, t) => { if (el.textContent !== t) el.textContent = t; };

  function fmtBytes(n) {
    if (!(n > 0)) return '0 B';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
    const v = n / 1024 ** i;
    return (i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)) + ' ' + units[i];
  }
  function fmtBitrate(bps) {
    if (!(bps > 0)) return '0 kbit/s';
    return bps >= 1e6 ? (bps / 1e6).toFixed(2) + ' Mbit/s' : (bps / 1e3).toFixed(0) + ' kbit/s';
  }
  function fmtDuration(s) {
    s = Math.max(0, Math.floor(s || 0));
    const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
    const pad = (n) => String(n).padStart(2, '0');
    return (hh ? hh + ':' + pad(mm) : mm) + ':' + pad(ss);
  }
  const fmtPct = (x) => (Number(x) || 0).toFixed(1) + ' %';
  const fmtTime = (ms) => (ms === null || ms === undefined ? '–' : new Date(ms).toLocaleString());
  function timeCell(ms) {
    return ms === null || ms === undefined
      ? h('td.nowrap', null, '–')
      : h('td.nowrap', null, h('time', { datetime: new Date(ms).toISOString() }, fmtTime(ms)));
  }

  function codecsText(tracks) {
    const sorted = (tracks || []).slice().sort((a, b) => (a.kind === 'video' ? 0 : 1) - (b.kind === 'video' ? 0 : 1));
    return sorted.map((t) => {
      let s = t.codec;
      if (t.kind === 'video') {
        if (t.width && t.height) s += ` ${t.width}×${t.height}`;
        if (t.fps) s += ` ${Math.round(t.fps)} fps`;
        if (t.layers > 1) s += ` (${t.layers} layers)`;
      }
      return s;
    }).join(' · ');
  }

  async function copyText(text, button) {
    let ok = false;
    try { await navigator.clipboard.writeText(text); ok = true; } catch (_) {
      // No clipboard API outside secure contexts (plain http on a LAN address).
      const ta = h('textarea', { readonly: true, 'aria-hidden': 'true' });
      ta.value = text;
      ta.style.position = 'fixed';
      ta.style.opacity = '0';
      document.body.append(ta);
      ta.select();
      try { ok = document.execCommand('copy'); } catch (_) { /* ignore */ }
      ta.remove();
    }
    if (button) {
      const was = button.textContent;
      button.textContent = ok ? 'Copied' : 'Copy failed: select the text';
      setTimeout(() => { button.textContent = was; }, 1500);
    }
  }

  // ---- API ----------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }
  let csrf = '';

  function toLogin() {
    location.assign('/admin/login?next=' + enc(location.pathname + location.search));
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = csrf;
    const opts = { method, headers, credentials: 'same-origin', cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let r;
    try { r = await fetch(path, opts); } catch (e) {
      throw new ApiError(0, 'network', 'Cannot reach the gateway (' + e.message + ')');
    }
    if (r.status === 401) {
      toLogin();
      throw new ApiError(401, 'unauthorized', 'Your session has ended; log in again.');
    }
    const text = r.status === 204 ? '' : await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
    if (!r.ok) {
      const e = data && data.error;
      throw new ApiError(r.status, e && e.code || 'http_' + r.status,
        e && e.message || `${method} ${path}: HTTP ${r.status} ${text.slice(0, 200)}`);
    }
    return data;
  }
  const query = (params) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== '' && v !== null && v !== undefined) q.set(k, v);
    const s = q.toString();
    return s ? '?' + s : '';
  };

  // ---- messages -----------------------------------------------------------------------------

  function showError(e) {
    if (e && e.status === 401) return; // already on the way to the login page
    setText($('#banner-text'), e && e.message ? e.message : String(e));
    $('#banner').hidden = false;
  }
  function clearError() { $('#banner').hidden = true; setText($('#banner-text'), ''); }
  let noticeTimer = null;
  function notice(text) {
    setText($('#notice'), text);
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => setText($('#notice'), ''), 4000);
  }

  /** Runs a button's action: the button is disabled meanwhile and an error lands in the banner. */
  async function act(button, fn) {
    clearError();
    if (button) button.disabled = true;
    try { return await fn(); } catch (e) { showError(e); return undefined; } finally {
      if (button) button.disabled = false;
    }
  }

  // ---- live figures (Server-Sent Events) -------------------------------------------------------

  const HISTORY = 60;
  /** One EventSource shared by the pages that show live figures, with the last minute of rates. */
  const live = {
    es: null, subs: new Set(), last: null, retry: null,
    rates: new Map(), serverIn: [], serverOut: [],
    subscribe(fn) {
      this.subs.add(fn);
      this.open();
      if (this.last) fn(this.last);
      return () => {
        this.subs.delete(fn);
        // Deferred: moving between two live pages keeps the connection.
        setTimeout(() => { if (!this.subs.size) this.close(); }, 0);
      };
    },
    open() {
      if (this.es) return;
      clearTimeout(this.retry);
      const es = this.es = new EventSource('/api/v1/events');
      es.addEventListener('snapshot', (ev) => {
        let snap;
        try { snap = JSON.parse(ev.data); } catch (_) { return; }
        this.record(snap);
        this.last = snap;
        for (const fn of this.subs) fn(snap);
      });
      es.onerror = () => {
        if (es.readyState !== EventSource.CLOSED) return; // the browser reconnects by itself
        // Refused (401) or the server went away: a session check sends us to the login page
        // if that is why; otherwise try again shortly.
        this.es = null;
        api('GET', '/api/v1/session').catch(() => {});
        this.retry = setTimeout(() => { if (this.subs.size) this.open(); }, 3000);
      };
    },
    close() {
      clearTimeout(this.retry);
      if (this.es) this.es.close();
      this.es = null;
      this.last = null;
    },
    record(snap) {
      const push = (arr, v) => { arr.push(Number(v) || 0); if (arr.length > HISTORY) arr.shift(); };
      push(this.serverIn, snap.server && snap.server.bandwidth_in_bps);
      push(this.serverOut, snap.server && snap.server.bandwidth_out_bps);
      const seen = new Set();
      for (const s of snap.streams || []) {
        seen.add(s.name);
        if (!this.rates.has(s.name)) this.rates.set(s.name, []);
        push(this.rates.get(s.name), s.bitrate_in_bps);
      }
      for (const name of this.rates.keys()) if (!seen.has(name)) this.rates.delete(name);
    },
  };

  /** An inline SVG sparkline of one or more series (the last HISTORY samples, right-aligned). */
  function sparkline(label, wide) {
    const NS = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('viewBox', `0 0 ${HISTORY - 1} 20`);
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('class', 'spark' + (wide ? ' wide' : ''));
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', label);
    return {
      el: svg,
      draw(...series) {
        const max = Math.max(1, ...series.flat());
        series.forEach((arr, i) => {
          let line = svg.children[i];
          if (!line) {
            line = document.createElementNS(NS, 'polyline');
            line.setAttribute('class', 's' + i);
            svg.append(line);
          }
          const off = HISTORY - arr.length;
          line.setAttribute('points', arr.map((v, j) => `${off + j},${(20 - (v / max) * 19).toFixed(2)}`).join(' '));
        });
      },
    };
  }

  // ---- shared components ----------------------------------------------------------------------

  function badge(state, testid) {
    return h('span.badge', { 'data-state': state, testid }, state);
  }
  function setBadge(el, state) { setText(el, state); el.dataset.state = state; }

  function fig(label, value, cls) {
    return h('div' + (cls ? '.' + cls : ''), null, h('dt', null, label), h('dd', null, value));
  }

  /** A stream's figures; the dashboard shows one per stream, the stream page one for its stream. */
  function streamFigures(name) {
    const t = (what, cls) => h('span' + (cls ? '.' + cls : ''), { testid: `${what}-${name}` }, '–');
    const e = {
      publisher: t('publisher'), codecs: t('codecs'), bitrate: t('bitrate'), loss: t('loss'),
      viewers: t('viewer-count', 'big'), recording: t('recording'), restreams: t('restreams'), uptime: t('uptime'),
      notice: h('p.warning', { testid: `notice-${name}`, role: 'alert', hidden: true }),
    };
    const spark = sparkline(`Bit rate in over the last minute`);
    const el = h('dl.figs', null,
      fig('Publisher', [e.publisher, e.notice], 'wide'),
      fig('Codecs', e.codecs, 'wide'),
      fig('Bit rate in', [e.bitrate, spark.el]),
      fig('Loss', e.loss),
      fig('Viewers', e.viewers),
      fig('Recording', e.recording),
      fig('Uptime', e.uptime),
      fig('Restreams', e.restreams, 'wide'));
    return {
      el,
      update(s) {
        const p = s.publisher;
        setText(e.publisher, p ? [p.protocol, p.software || p.user_agent || 'unknown software', p.address].filter(Boolean).join(' · ') : 'none');
        setText(e.notice, p && p.notice ? p.notice : '');
        e.notice.hidden = !(p && p.notice);
        setText(e.codecs, codecsText(s.tracks) || '–');
        setText(e.bitrate, fmtBitrate(s.bitrate_in_bps));
        spark.draw(live.rates.get(name) || [s.bitrate_in_bps]);
        setText(e.loss, fmtPct(s.loss_pct) + (s.packets_lost ? ` (${s.packets_lost} packets)` : ''));
        setText(e.viewers, String(s.viewers));
        setText(e.recording, s.recording && s.recording.active ? 'recording' : 'not recording');
        setText(e.uptime, fmtDuration(s.uptime_s));
        const rs = s.restreams || [];
        const restreams = rs.length ? rs.map((r) => `${r.url} ${r.state}`).join(' · ') : 'none';
        setText(e.restreams, restreams);
      },
    };
  }

  /** A secret shown once after creation, with a copy button. */
  function secretBox(secret, testid, what) {
    const box = h('div.secret', { role: 'status', testid: testid + '-box' },
      h('strong', null, `Copy this ${what} now: it will not be shown again.`),
      h('code', { testid }, secret),
      h('div.actions', null,
        h('button', { type: 'button', testid: testid + '-copy', onclick: (ev) => copyText(secret, ev.currentTarget) }, 'Copy'),
        h('button', { type: 'button', onclick: () => box.remove() }, 'Done')));
    return box;
  }

  /** Prev/next links for a page of a listing; the page number lives in the URL's ?page=. */
  function pager(data) {
    const pages = Math.max(1, Math.ceil((data.total || 0) / (data.per_page || 1)));
    const link = (p, text, testid) => {
      const q = new URLSearchParams(location.search);
      q.set('page', p);
      const off = p < 1 || p > pages;
      return h('a', { href: location.pathname + '?' + q, testid, 'aria-disabled': off ? 'true' : null, tabindex: off ? '-1' : null }, text);
    };
    return h('nav.pager', { 'aria-label': 'Pages' },
      link(data.page - 1, '← Newer', 'page-prev'),
      h('span.muted', { testid: 'page-info' }, `Page ${data.page} of ${pages} · ${data.total} in all`),
      link(data.page + 1, 'Older →', 'page-next'));
  }

  function table(testid, headers) {
    const tbody = h('tbody');
    const el = h('div.table-wrap', null, h('table', { testid },
      h('thead', null, h('tr', null, headers.map((x) => (Array.isArray(x) ? h('th.' + x[1], { scope: 'col' }, x[0]) : h('th', { scope: 'col' }, x))))),
      tbody));
    return { el, tbody };
  }

  /**
   * Brings tbody's rows in line with items, keeping the rows of items already shown (so a button
   * is never replaced under the pointer): make(item) builds a row and returns its update function.
   */
  function keyedRows(tbody, items, key, make, emptyText, cols) {
    const rows = tbody._rows || (tbody._rows = new Map());
    const keep = new Set(items.map(key));
    for (const [k, r] of rows) if (!keep.has(k)) { r.tr.remove(); rows.delete(k); }
    let prev = null;
    for (const item of items) {
      const k = key(item);
      let r = rows.get(k);
      if (!r) { const tr = h('tr'); r = { tr, update: make(item, tr) }; rows.set(k, r); }
      r.update(item);
      const want = prev ? prev.nextSibling : tbody.firstChild;
      if (want !== r.tr) tbody.insertBefore(r.tr, want);
      prev = r.tr;
    }
    const empty = tbody.querySelector('tr.empty-row');
    if (!items.length && !empty) tbody.append(h('tr.empty-row', null, h('td.empty', { colspan: cols }, emptyText)));
    if (items.length && empty) empty.remove();
  }

  // ---- the router -----------------------------------------------------------------------------

  let current = null;
  const safeDecode = (x) => { try { return decodeURIComponent(x); } catch (_) { return x; } };

  function leavePage() {
    if (!current) return;
    current.alive = false;
    for (const f of current.cleanups.splice(0)) { try { f(); } catch (_) { /* ignore */ } }
  }

  const routes = [
    [/^\/admin\/?$/, 'dashboard', pageDashboard],
    [/^\/admin\/streams\/([^/]+)\/?$/, 'dashboard', pageStream],
    [/^\/admin\/recordings\/?$/, 'recordings', pageRecordings],
    [/^\/admin\/keys\/?$/, 'keys', pageKeys],
    [/^\/admin\/tokens\/?$/, 'tokens', pageTokens],
    [/^\/admin\/audit\/?$/, 'audit', pageAudit],
  ];

  function render() {
    leavePage();
    clearError();
    const ctx = current = {
      alive: true,
      cleanups: [],
      params: new URLSearchParams(location.search),
      onCleanup(f) { this.cleanups.push(f); },
      every(ms, f) { const t = setInterval(f, ms); this.onCleanup(() => clearInterval(t)); },
    };
    const main = $('#main');
    main.replaceChildren();
    let found = null;
    for (const [re, nav, fn] of routes) {
      const m = re.exec(location.pathname);
      if (m) { found = { nav, fn, args: m.slice(1).map(safeDecode) }; break; }
    }
    for (const a of document.querySelectorAll('nav a[data-nav]')) {
      if (found && a.dataset.nav === found.nav) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    }
    if (!found) {
      document.title = 'Not found – Whipcord admin';
      main.append(h('h1', null, 'Page not found'), h('p', null, h('a', { href: '/admin/' }, 'Back to the dashboard')));
      return;
    }
    Promise.resolve().then(() => found.fn(main, ctx, ...found.args)).catch((e) => { if (ctx.alive) showError(e); });
  }

  function navigate(url) {
    history.pushState(null, '', url);
    render();
    window.scrollTo(0, 0);
    $('#main').focus({ preventScroll: true });
  }

  function title(main, text, ...extra) {
    document.title = text + ' – Whipcord admin';
    main.append(h('div.title-row', null, h('h1', null, text), extra));
  }

  // ---- dashboard ------------------------------------------------------------------------------

  async function pageDashboard(main, ctx) {
    title(main, 'Dashboard');
    const s = {
      cpu: h('span.big', { testid: 'server-cpu' }, '–'), mem: h('span.big', { testid: 'server-memory' }, '–'),
      bwIn: h('span.big', { testid: 'server-bw-in' }, '–'), bwOut: h('span.big', { testid: 'server-bw-out' }, '–'),
      streams: h('span', { testid: 'server-streams' }, '–'), viewers: h('span', { testid: 'server-viewers' }, '–'),
      uptime: h('span', { testid: 'server-uptime' }, '–'), version: h('span', { testid: 'server-version' }, '–'),
    };
    const bw = sparkline('Server bandwidth in and out over the last minute', true);
    main.append(h('section.panel', { 'aria-labelledby': 'h-server' },
      h('h2', { id: 'h-server' }, 'Server'),
      h('dl.figs', null,
        fig('CPU', s.cpu), fig('Memory', s.mem), fig('Bandwidth in', s.bwIn), fig('Bandwidth out', s.bwOut),
        fig('Streams', s.streams), fig('Viewers', s.viewers), fig('Uptime', s.uptime), fig('Version', s.version),
        fig('Last minute', [bw.el, h('span.legend', null, h('span.k0'), 'in', h('span.k1'), 'out')], 'wide'))));

    const list = h('div.cards', { testid: 'stream-list' });
    const empty = h('p.empty', { testid: 'no-streams', hidden: true },
      'No live streams. Publish with OBS (WHIP) to ', h('code', null, location.origin + '/whip/NAME'),
      ' or from a browser at ', h('a', { href: '/' }, 'the start page'), '.');
    main.append(h('section', { 'aria-labelledby': 'h-streams' }, h('h2', { id: 'h-streams' }, 'Live streams'), empty, list));

    const cards = new Map();
    function update(server, streams) {
      if (server) {
        setText(s.cpu, fmtPct(server.cpu_pct));
        setText(s.mem, fmtBytes(server.memory_bytes));
        setText(s.bwIn, fmtBitrate(server.bandwidth_in_bps));
        setText(s.bwOut, fmtBitrate(server.bandwidth_out_bps));
        setText(s.streams, String(server.streams));
        setText(s.viewers, String(server.viewers));
        setText(s.uptime, fmtDuration(server.uptime_s));
        setText(s.version, server.version || '–');
        bw.draw(live.serverIn.length ? live.serverIn : [server.bandwidth_in_bps], live.serverOut.length ? live.serverOut : [server.bandwidth_out_bps]);
      }
      const sorted = streams.slice().sort((a, b) => a.name.localeCompare(b.name));
      const names = new Set(sorted.map((x) => x.name));
      for (const [name, c] of cards) if (!names.has(name)) { c.el.remove(); cards.delete(name); }
      sorted.forEach((st, i) => {
        let c = cards.get(st.name);
        if (!c) {
          const figs = streamFigures(st.name);
          const el = h('article.card', { testid: `stream-row-${st.name}`, 'aria-label': `Stream ${st.name}` },
            h('div.title-row', null,
              h('h3', null, h('a', { href: '/admin/streams/' + enc(st.name), testid: `stream-link-${st.name}` }, st.name)),
              h('span.grow'), badge('live')),
            figs.el);
          c = { el, figs };
          cards.set(st.name, c);
        }
        c.figs.update(st);
        if (list.children[i] !== c.el) list.insertBefore(c.el, list.children[i] || null);
      });
      empty.hidden = sorted.length > 0;
    }

    // RTSP cameras: from the configuration or added here.
    const sources = table('sources-table', ['Stream', 'Camera', 'State', 'Codecs', ['Reconnects', 'num'], 'Last error', '']);
    const sStream = h('input', { id: 'source-stream', type: 'text', required: true, autocomplete: 'off', spellcheck: 'false', placeholder: 'door', testid: 'source-stream' });
    const sUrl = h('input', { id: 'source-url', type: 'text', inputmode: 'url', required: true, autocomplete: 'off', spellcheck: 'false', placeholder: 'rtsp://user:password@192.168.1.20/stream1', testid: 'source-url' });
    const sTransport = h('select', { id: 'source-transport', testid: 'source-transport' },
      h('option', { value: 'tcp' }, 'TCP'), h('option', { value: 'udp' }, 'UDP'), h('option', { value: 'auto' }, 'Auto'));
    const sOnDemand = h('input', { type: 'checkbox', testid: 'source-on-demand' });
    const sAdd = h('button.primary', { type: 'submit', testid: 'source-add' }, 'Add camera');
    const sForm = h('form.form-row', { testid: 'source-form' },
      h('label', { for: 'source-stream' }, 'Stream', sStream),
      h('label', { for: 'source-url' }, 'RTSP URL', sUrl),
      h('label', { for: 'source-transport' }, 'Transport', sTransport),
      h('label.check', null, sOnDemand, 'Only while watched'),
      sAdd);
    const sourcesSection = h('section.panel', { 'aria-labelledby': 'h-sources', testid: 'sources' },
      h('h2', { id: 'h-sources' }, 'Cameras (RTSP)'), sources.el,
      h('h3', null, 'Add a camera'), sForm,
      h('p.muted', null, 'The password in the URL is kept for the camera and never shown again.'));
    main.append(sourcesSection);
    const sourcesGone = new Map();
    let lastSources = [];
    function renderSources(items) {
      lastSources = items;
      const shown = items.filter((x) => !(sourcesGone.get(x.stream) > Date.now()));
      keyedRows(sources.tbody, shown, (x) => x.stream, (x, tr) => {
        tr.dataset.testid = `source-row-${x.stream}`;
        const c = { url: h('td.wrap'), state: badge('', `source-state-${x.stream}`), codecs: h('td'), reconnects: h('td.num'), error: h('td.wrap') };
        const remove = h('button.small.danger', { type: 'button', testid: `source-remove-${x.stream}` }, 'Remove');
        remove.addEventListener('click', () => act(remove, async () => {
          await api('DELETE', `/api/v1/sources/${enc(x.stream)}`);
          sourcesGone.set(x.stream, Date.now() + 5000);
          renderSources(lastSources);
          notice('Camera removed.');
        }));
        add(tr, [h('td', null, h('a', { href: '/admin/streams/' + enc(x.stream) }, x.stream)), c.url, h('td', null, c.state), c.codecs, c.reconnects, c.error, h('td', null, remove)]);
        return (y) => {
          setText(c.url, y.url + ' · ' + y.transport + (y.on_demand ? ' · on demand' : ''));
          setBadge(c.state, y.state);
          setText(c.codecs, (y.codecs || []).join(', '));
          setText(c.reconnects, String(y.reconnects));
          setText(c.error, y.last_error || '');
          remove.disabled = !!y.from_config;
          remove.title = y.from_config ? 'Set in the configuration file' : '';
        };
      }, 'No cameras.', 7);
    }
    async function refreshSources() {
      const page = await api('GET', '/api/v1/sources?per_page=500').catch(() => null);
      if (!ctx.alive || !page) return;
      renderSources(page.items || []);
    }
    sForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      act(sAdd, async () => {
        const stream = sStream.value.trim();
        await api('POST', '/api/v1/sources', { stream, url: sUrl.value.trim(), transport: sTransport.value, on_demand: sOnDemand.checked });
        sourcesGone.delete(stream);
        sUrl.value = '';
        sStream.value = '';
        notice('Camera added.');
        await refreshSources();
      });
    });
    refreshSources();
    ctx.every(3000, refreshSources);

    let gotLive = false;
    ctx.onCleanup(live.subscribe((snap) => { gotLive = true; update(snap.server, snap.streams || []); }));
    const [stats, page] = await Promise.all([api('GET', '/api/v1/stats'), api('GET', '/api/v1/streams?per_page=500')]);
    if (ctx.alive && !gotLive) update(stats, page.items || []);
  }

  // ---- one stream -----------------------------------------------------------------------------

  async function pageStream(main, ctx, name) {
    const status = badge('…', 'stream-status');
    title(main, `Stream ${name}`, status);
    const api1 = '/api/v1/streams/' + enc(name);

    // Live figures and the publisher and recording controls.
    const figs = streamFigures(name);
    const offline = h('p.muted', { testid: 'stream-offline', hidden: true }, 'This stream is not live.');
    const recState = h('span.badge', { testid: 'recording-state' }, '–');
    const recStart = h('button', { type: 'button', testid: 'recording-start' }, 'Start recording');
    const recStop = h('button', { type: 'button', testid: 'recording-stop' }, 'Stop recording');
    const stopPub = h('button.danger', { type: 'button', testid: 'stop-publisher' }, 'Stop publisher');
    main.append(h('section.panel', { 'aria-labelledby': 'h-live' },
      h('h2', { id: 'h-live' }, 'Live figures'), offline, figs.el,
      h('div.actions', null, h('span', null, 'Recording: '), recState, recStart, recStop, h('span.grow'), stopPub)));

    let isLive = false, recActive = false, recOverrideUntil = 0;
    // Rows just removed here, hidden from answers that were on their way before the removal.
    const gone = new Map();
    const notGone = (k) => !(gone.get(k) > Date.now());
    function setRec(active) {
      recActive = active;
      setBadge(recState, active ? 'recording' : 'not recording');
      recStart.disabled = !isLive || active;
      recStop.disabled = !isLive || !active;
    }
    function setLive(info, fromAction) {
      isLive = !!info;
      setBadge(status, isLive ? 'live' : 'offline');
      offline.hidden = isLive;
      figs.el.hidden = !isLive;
      stopPub.disabled = !isLive;
      if (info) figs.update(info);
      // A snapshot taken just before a start/stop must not undo the button's answer.
      if (fromAction || Date.now() > recOverrideUntil) setRec(!!(info && info.recording && info.recording.active));
      else setRec(recActive);
    }
    const recording = (action, btn) => act(btn, async () => {
      const r = await api('POST', `${api1}/recording/${action}`);
      recOverrideUntil = Date.now() + 2500;
      setRec(!!(r && r.active));
    });
    recStart.addEventListener('click', () => recording('start', recStart).then(() => setRec(recActive)));
    recStop.addEventListener('click', () => recording('stop', recStop).then(() => setRec(recActive)));
    stopPub.addEventListener('click', () => {
      if (!confirm(`Disconnect the publisher of ${name}? The stream ends for every viewer.`)) return;
      act(stopPub, async () => { await api('DELETE', `${api1}/publisher`); notice('Publisher disconnected.'); });
    });

    // Viewers.
    const viewers = table('viewers-table', ['Address', 'User agent', 'State', ['Bit rate', 'num'], ['Loss', 'num'], ['Watching', 'num'], '']);
    const viewerCount = h('span.muted', { testid: 'viewers-total' });
    main.append(h('section.panel', { 'aria-labelledby': 'h-viewers' },
      h('div.title-row', null, h('h2', { id: 'h-viewers' }, 'Viewers'), viewerCount), viewers.el));
    let lastViewers = { items: [], total: 0 };
    function renderViewers(page) {
      lastViewers = page;
      setText(viewerCount, page.total > page.items.length ? `${page.items.length} of ${page.total} shown` : '');
      keyedRows(viewers.tbody, page.items.filter((v) => notGone('v' + v.session)), (v) => v.session, (v, tr) => {
        tr.dataset.testid = `viewer-row-${v.session}`;
        const c = { address: h('td.nowrap'), ua: h('td.wrap'), state: badge(''), bitrate: h('td.num'), loss: h('td.num'), watching: h('td.num') };
        const kick = h('button.small.danger', { type: 'button', testid: `kick-${v.session}`, 'aria-label': `Kick viewer ${v.address || v.session}` }, 'Kick');
        kick.addEventListener('click', () => act(kick, async () => {
          await api('DELETE', `${api1}/viewers/${enc(v.session)}`);
          gone.set('v' + v.session, Date.now() + 5000);
          renderViewers(lastViewers);
          notice('Viewer disconnected.');
          refresh();
        }));
        add(tr, [c.address, c.ua, h('td', null, c.state), c.bitrate, c.loss, c.watching, h('td', null, kick)]);
        return (x) => {
          setText(c.address, x.address || '–');
          setText(c.ua, x.user_agent || '–');
          setBadge(c.state, x.state);
          setText(c.bitrate, fmtBitrate(x.bitrate_bps));
          setText(c.loss, fmtPct(x.loss_pct));
          setText(c.watching, fmtDuration(x.watching_s));
        };
      }, isLive ? 'No viewers.' : 'The stream is not live.', 7);
    }

    // Restream targets.
    const restreams = table('restreams-table', ['Destination', 'State', ['Bit rate', 'num'], ['Reconnects', 'num'], 'Last error', '']);
    const rUrl = h('input', { id: 'restream-url', type: 'text', inputmode: 'url', required: true, autocomplete: 'off', spellcheck: 'false', placeholder: 'rtmp://a.rtmp.youtube.com/live2/STREAM-KEY', testid: 'restream-url' });
    const rTranscode = h('input', { type: 'checkbox', testid: 'restream-transcode' });
    const rEnhanced = h('input', { type: 'checkbox', testid: 'restream-enhanced' });
    const rAdd = h('button.primary', { type: 'submit', testid: 'restream-add' }, 'Add target');
    const rForm = h('form.form-row', { testid: 'restream-form' },
      h('label', { for: 'restream-url' }, 'RTMP or RTMPS URL with the stream key', rUrl),
      h('label.check', null, rTranscode, 'Transcode to H264'),
      h('label.check', null, rEnhanced, 'Enhanced RTMP'),
      rAdd);
    main.append(h('section.panel', { 'aria-labelledby': 'h-restreams' },
      h('h2', { id: 'h-restreams' }, 'Restream targets'), restreams.el,
      h('h3', null, 'Add a target'), rForm,
      h('p.muted', null, 'VP8, VP9 and AV1 need “Transcode to H264” for plain RTMP; “Enhanced RTMP” sends H265, AV1, VP9 and Opus as they are to servers that accept them.')));
    let lastRestreams = [];
    function renderRestreams(items) {
      lastRestreams = items;
      keyedRows(restreams.tbody, items.filter((r) => notGone('r' + r.id)), (r) => r.id, (r, tr) => {
        tr.dataset.testid = `restream-row-${r.id}`;
        const c = { url: h('td.wrap'), state: badge('', `restream-state-${r.id}`), bitrate: h('td.num'), reconnects: h('td.num'), error: h('td.wrap') };
        const retry = h('button.small', { type: 'button', testid: `restream-retry-${r.id}` }, 'Retry');
        const remove = h('button.small.danger', { type: 'button', testid: `restream-remove-${r.id}` }, 'Remove');
        retry.addEventListener('click', () => act(retry, async () => { await api('POST', `/api/v1/restreams/${r.id}/retry`); refresh(); }));
        remove.addEventListener('click', () => act(remove, async () => {
          await api('DELETE', `/api/v1/restreams/${r.id}`);
          gone.set('r' + r.id, Date.now() + 5000);
          renderRestreams(lastRestreams);
          notice('Restream target removed.');
          await refresh();
        }));
        add(tr, [c.url, h('td', null, c.state), c.bitrate, c.reconnects, c.error, h('td', null, h('div.actions', null, retry, remove))]);
        return (x) => {
          setText(c.url, x.url + (x.transcode ? ' (transcode)' : '') + (x.enhanced ? ' (enhanced)' : ''));
          setBadge(c.state, x.state);
          setText(c.bitrate, fmtBitrate(x.bitrate_bps));
          setText(c.reconnects, String(x.reconnects));
          setText(c.error, x.last_error || '');
          remove.disabled = !!x.from_config;
          remove.title = x.from_config ? 'Set in the configuration file' : '';
        };
      }, 'No restream targets.', 6);
    }
    rForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      act(rAdd, async () => {
        await api('POST', '/api/v1/restreams', { stream: name, url: rUrl.value.trim(), transcode: rTranscode.checked, enhanced: rEnhanced.checked });
        rUrl.value = '';
        notice('Restream target added.');
        await refresh();
      });
    });

    // Preview over WHEP, started on request: a preview is a viewer like any other.
    const video = h('video', { muted: true, autoplay: true, playsinline: true, controls: true, testid: 'preview' });
    video.muted = true;
    const pToken = h('input', { id: 'preview-token', type: 'password', autocomplete: 'off', placeholder: 'only if watching needs one', testid: 'preview-token' });
    const pStart = h('button', { type: 'button', testid: 'preview-start' }, 'Start preview');
    const pStop = h('button', { type: 'button', testid: 'preview-stop', disabled: true }, 'Stop preview');
    const pState = h('span.muted', { testid: 'preview-state' }, '');
    let pc = null, resource = null, resourceToken = '';
    function stopPreview() {
      const p = pc, r = resource;
      pc = null; resource = null;
      if (p) p.close();
      video.srcObject = null;
      pStart.disabled = false; pStop.disabled = true;
      setText(pState, '');
      if (r && window.Whipcord) window.Whipcord.deleteResource(r, resourceToken, true).catch(() => {});
    }
    async function startPreview() {
      const W = window.Whipcord;
      if (!W) { showError('The WHEP helper (/assets/whip.js) did not load.'); return; }
      stopPreview();
      clearError();
      pStart.disabled = true; pStop.disabled = false;
      const token = pToken.value.trim();
      const p = pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
      p.addTransceiver('video', { direction: 'recvonly' });
      p.addTransceiver('audio', { direction: 'recvonly' });
      const ms = new MediaStream();
      p.ontrack = (ev) => { ms.addTrack(ev.track); video.srcObject = ms; video.play().catch(() => {}); };
      p.onconnectionstatechange = () => { if (p === pc) setText(pState, p.connectionState); };
      setText(pState, 'connecting');
      try {
        const r = await W.negotiate(p, '/whep/' + enc(name), token);
        if (p !== pc) { W.deleteResource(r.location, token).catch(() => {}); return; }
        resource = r.location;
        resourceToken = token;
      } catch (e) {
        if (p !== pc) return;
        stopPreview();
        showError('Preview failed: ' + (e.status === 404 ? 'the stream is not live' : e.status === 401 || e.status === 403 ? 'watching this stream needs a token' : e.message));
      }
    }
    pStart.addEventListener('click', startPreview);
    pStop.addEventListener('click', stopPreview);
    ctx.onCleanup(stopPreview);

    // Publishing from OBS.
    const whipUrl = location.origin + '/whip/' + enc(name);
    let obsKey = '';
    const obsBlock = h('pre', { testid: 'obs-setup' });
    const obsText = () => `Service: WHIP\nServer: ${whipUrl}\nBearer Token: ${obsKey || '<a publish key for this stream>'}`;
    const renderObs = () => setText(obsBlock, obsText());
    renderObs();
    const obsCopy = h('button', { type: 'button', testid: 'obs-copy' }, 'Copy settings');
    obsCopy.addEventListener('click', () => copyText(obsText(), obsCopy));
    const obsCreate = h('button.primary', { type: 'button', testid: 'obs-create-key' }, 'Create a publish key for this stream');
    const obsNote = h('div');
    obsCreate.addEventListener('click', () => act(obsCreate, async () => {
      const r = await api('POST', '/api/v1/keys', { name: `${name} (OBS)`, stream_pattern: name, action: 'publish' });
      obsKey = r.secret;
      renderObs();
      obsNote.replaceChildren(secretBox(r.secret, 'obs-key-secret', 'key'),
        h('p.muted', null, 'Once a publish key covers a stream, publishing it needs a key.'));
    }));
    const whipCopy = h('button.small', { type: 'button', testid: 'whip-url-copy' }, 'Copy');
    whipCopy.addEventListener('click', () => copyText(whipUrl, whipCopy));

    main.append(h('div.two', null,
      h('section.panel', { 'aria-labelledby': 'h-preview' },
        h('h2', { id: 'h-preview' }, 'Preview'), video,
        h('div.form-row', null, h('label', { for: 'preview-token' }, 'Watch token (optional)', pToken), pStart, pStop),
        pState),
      h('section.panel', { 'aria-labelledby': 'h-obs' },
        h('h2', { id: 'h-obs' }, 'Publish with OBS'),
        h('p', null, 'WHIP URL: ', h('code', { testid: 'whip-url' }, whipUrl), ' ', whipCopy),
        h('p.muted', null, 'OBS Studio 30 or newer: Settings → Stream.'),
        obsBlock,
        h('div.actions', null, obsCopy, obsCreate),
        obsNote)));

    // Data: live figures from the event stream; viewers and targets polled.
    async function refresh() {
      const [v, r] = await Promise.all([
        isLive ? api('GET', `${api1}/viewers?per_page=500`).catch((e) => (e.status === 404 ? { items: [], total: 0 } : Promise.reject(e)))
          : Promise.resolve({ items: [], total: 0 }),
        api('GET', '/api/v1/restreams' + query({ stream: name, per_page: 500 })),
      ]);
      if (!ctx.alive) return;
      renderViewers(v);
      renderRestreams(r.items || []);
    }
    let gotLive = false;
    ctx.onCleanup(live.subscribe((snap) => {
      gotLive = true;
      const info = (snap.streams || []).find((x) => x.name === name) || null;
      const was = isLive;
      setLive(info);
      if (info) renderRestreams(info.restreams || []);
      if (was !== isLive) refresh().catch(showError);
    }));
    const first = await api('GET', api1).catch((e) => (e.status === 404 ? null : Promise.reject(e)));
    if (!ctx.alive) return;
    if (!gotLive) setLive(first);
    await refresh();
    ctx.every(2000, () => { refresh().catch((e) => { if (ctx.alive) showError(e); }); });
  }

  // ---- recordings -----------------------------------------------------------------------------

  async function pageRecordings(main, ctx) {
    title(main, 'Recordings');
    const q = ctx.params;
    const totals = h('p', { testid: 'recordings-totals' }, '…');
    main.append(h('section.panel', { 'aria-labelledby': 'h-totals' }, h('h2', { id: 'h-totals' }, 'Storage'), totals));

    const fStream = h('input', { id: 'rec-stream', type: 'search', value: q.get('stream') || '', placeholder: 'any stream', testid: 'rec-stream' });
    const fFrom = h('input', { id: 'rec-from', type: 'datetime-local', value: q.get('from') || '', testid: 'rec-from' });
    const fTo = h('input', { id: 'rec-to', type: 'datetime-local', value: q.get('to') || '', testid: 'rec-to' });
    const form = h('form.form-row', { testid: 'rec-filter-form', role: 'search' },
      h('label', { for: 'rec-stream' }, 'Stream', fStream),
      h('label', { for: 'rec-from' }, 'Started from', fFrom),
      h('label', { for: 'rec-to' }, 'Started before', fTo),
      h('button.primary', { type: 'submit', testid: 'rec-filter' }, 'Filter'),
      h('a', { href: '/admin/recordings', testid: 'rec-clear' }, 'Clear'));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      navigate('/admin/recordings' + query({ stream: fStream.value.trim(), from: fFrom.value, to: fTo.value }));
    });

    const player = h('section.panel', { testid: 'rec-player', hidden: true, 'aria-labelledby': 'h-player' });
    const list = table('recordings-table', ['Started', 'Stream', ['Duration', 'num'], ['Size', 'num'], 'Media', 'State', '']);
    const pagerBox = h('div');
    main.append(h('section.panel', { 'aria-labelledby': 'h-rec' }, h('h2', { id: 'h-rec' }, 'Files'), form), player,
      h('section.panel', { 'aria-label': 'Recordings list' }, list.el, pagerBox));

    function play(r) {
      const video = h('video', { controls: true, autoplay: true, playsinline: true, preload: 'metadata', testid: 'rec-video', src: `/api/v1/recordings/${r.id}/download?inline=1` });
      video.muted = true; // autoplay needs it; the controls unmute
      const close = h('button', { type: 'button', testid: 'rec-player-close' }, 'Close');
      close.addEventListener('click', () => { video.removeAttribute('src'); video.load(); player.replaceChildren(); player.hidden = true; });
      player.replaceChildren(h('div.title-row', null, h('h2', { id: 'h-player' }, r.file_name), h('span.grow'), close), video);
      player.hidden = false;
      player.scrollIntoView({ block: 'nearest' });
    }
    ctx.onCleanup(() => { const v = $('video', player); if (v) { v.removeAttribute('src'); v.load(); } });

    const toMs = (v) => (v ? new Date(v).getTime() : '');
    const page = Math.max(1, Number(q.get('page')) || 1);
    async function load() {
      const [data, t] = await Promise.all([
        api('GET', '/api/v1/recordings' + query({ stream: q.get('stream') || '', from_ms: toMs(q.get('from')), to_ms: toMs(q.get('to')), page, per_page: 25 })),
        api('GET', '/api/v1/recordings/totals'),
      ]);
      if (!ctx.alive) return;
      const parts = [`${t.count} recording${t.count === 1 ? '' : 's'}, ${fmtBytes(t.size_bytes)}`];
      parts.push(t.max_total_bytes ? `of ${fmtBytes(t.max_total_bytes)} allowed (${Math.round((100 * t.size_bytes) / t.max_total_bytes)} %)` : 'no size limit');
      parts.push(t.max_age_hours ? `kept ${t.max_age_hours} h` : 'kept until deleted');
      totals.replaceChildren(parts.join(' · '));
      if (t.max_total_bytes) totals.append(' ', h('meter', { min: 0, max: t.max_total_bytes, value: t.size_bytes, high: t.max_total_bytes * 0.9, 'aria-label': 'Space used' }));
      list.tbody._rows = null;
      list.tbody.replaceChildren();
      keyedRows(list.tbody, data.items || [], (r) => r.id, (r, tr) => {
        tr.dataset.testid = `rec-row-${r.id}`;
        const playBtn = h('button.small', { type: 'button', testid: `rec-play-${r.id}` }, 'Play');
        playBtn.addEventListener('click', () => play(r));
        const del = h('button.small.danger', { type: 'button', testid: `rec-delete-${r.id}`, disabled: r.state === 'recording', title: r.state === 'recording' ? 'Stop the recording first' : null }, 'Delete');
        del.addEventListener('click', () => {
          if (!confirm(`Delete ${r.file_name}? This cannot be undone.`)) return;
          act(del, async () => { await api('DELETE', `/api/v1/recordings/${r.id}`); notice(`Deleted ${r.file_name}.`); await load(); });
        });
        const media = [r.video_codec, r.width && r.height ? `${r.width}×${r.height}` : '', r.audio_codec].filter(Boolean).join(' · ') || '–';
        const state = h('td', null, badge(r.state, `rec-state-${r.id}`), r.error ? h('div.error-text', null, r.error) : null,
          r.dropped_frames ? h('div.muted', null, `${r.dropped_frames} frames dropped`) : null);
        add(tr, [timeCell(r.started_at_ms), h('td.wrap', null, r.stream, h('div.muted', null, r.file_name)),
          h('td.num', null, r.duration_ms === null || r.duration_ms === undefined ? '–' : fmtDuration(r.duration_ms / 1000)),
          h('td.num', null, fmtBytes(r.size_bytes)), h('td', null, media), state,
          h('td', null, h('div.actions', null, playBtn,
            h('a', { href: r.download_url, download: r.file_name, testid: `rec-download-${r.id}` }, 'Download'), del))]);
        return () => {};
      }, 'No recordings match.', 7);
      pagerBox.replaceChildren(pager(data));
    }
    await load();
  }

  // ---- stream keys and API tokens ---------------------------------------------------------------

  function keyStatus(x) {
    if (x.revoked_at_ms) return 'revoked';
    if (x.expires_at_ms && x.expires_at_ms <= Date.now()) return 'expired';
    return 'active';
  }

  async function pageKeys(main, ctx) {
    title(main, 'Stream keys');
    const name = h('input', { id: 'key-name', required: true, maxlength: 200, placeholder: 'e.g. studio OBS', testid: 'key-name' });
    const pattern = h('input', { id: 'key-pattern', required: true, maxlength: 200, pattern: '[A-Za-z0-9_.*?\\-]+', placeholder: 'cam or class-*', spellcheck: 'false', testid: 'key-pattern' });
    const action = h('select', { id: 'key-action', testid: 'key-action' }, h('option', { value: 'publish' }, 'Publish'), h('option', { value: 'watch' }, 'Watch'));
    const expiry = h('input', { id: 'key-expiry', type: 'number', min: '0', step: 'any', inputmode: 'decimal', placeholder: 'never', testid: 'key-expiry' });
    const create = h('button.primary', { type: 'submit', testid: 'key-create' }, 'Create key');
    const created = h('div');
    const form = h('form.form-row', { testid: 'key-form' },
      h('label', { for: 'key-name' }, 'Name', name),
      h('label', { for: 'key-pattern' }, 'Stream name or pattern', pattern),
      h('label', { for: 'key-action' }, 'Allows', action),
      h('label', { for: 'key-expiry' }, 'Expires in (hours)', expiry),
      create);
    main.append(h('section.panel', { 'aria-labelledby': 'h-newkey' },
      h('h2', { id: 'h-newkey' }, 'New key'),
      h('p.muted', null, 'A key lets OBS or a browser publish (Bearer Token) or watch (?token=) the streams its pattern matches: * is any run of characters, ? one character. Once a publish or watch key covers a stream, that stream needs a key for it.'),
      form, created));

    const list = table('keys-table', ['Name', 'Pattern', 'Allows', 'Created', 'Expires', 'Last used', 'Status', 'Revoke']);
    const pagerBox = h('div');
    main.append(h('section.panel', { 'aria-labelledby': 'h-keys' }, h('h2', { id: 'h-keys' }, 'Keys'), list.el, pagerBox));

    const page = Math.max(1, Number(ctx.params.get('page')) || 1);
    async function load() {
      const data = await api('GET', '/api/v1/keys' + query({ page, per_page: 50 }));
      if (!ctx.alive) return;
      list.tbody._rows = null;
      list.tbody.replaceChildren();
      keyedRows(list.tbody, data.items || [], (k) => k.id, (k, tr) => {
        const st = keyStatus(k);
        tr.dataset.testid = `key-row-${k.id}`;
        tr.dataset.keyId = k.id;
        if (st !== 'active') tr.className = 'revoked';
        let revokeCell = h('td.muted', null, st === 'revoked' ? fmtTime(k.revoked_at_ms) : '–');
        if (st !== 'revoked') {
          const endId = `key-end-${k.id}`;
          const end = h('input', { type: 'checkbox', id: endId, testid: `key-end-sessions-${k.id}` });
          const btn = h('button.small.danger', { type: 'button', testid: `key-revoke-${k.id}`, 'aria-label': `Revoke key ${k.name}` }, 'Revoke');
          btn.addEventListener('click', () => {
            if (!confirm(`Revoke the key “${k.name}”? It stops working at once.`)) return;
            act(btn, async () => {
              await api('DELETE', `/api/v1/keys/${k.id}?end_sessions=${end.checked}`);
              notice(`Key “${k.name}” revoked${end.checked ? ' and its sessions ended' : ''}.`);
              await load();
            });
          });
          revokeCell = h('td', null, h('div.actions', null, h('label.check', { for: endId }, end, 'also end the live sessions that use it'), btn));
        }
        add(tr, [h('td.wrap', null, k.name), h('td', null, h('code', null, k.stream_pattern)), h('td', null, k.action),
          timeCell(k.created_at_ms), timeCell(k.expires_at_ms), timeCell(k.last_used_at_ms),
          h('td', null, badge(st, `key-status-${k.id}`)), revokeCell]);
        return () => {};
      }, 'No stream keys yet.', 8);
      pagerBox.replaceChildren(pager(data));
    }
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      act(create, async () => {
        const body = { name: name.value.trim(), stream_pattern: pattern.value.trim(), action: action.value };
        const hours = parseFloat(expiry.value);
        if (hours > 0) body.expires_in_s = Math.round(hours * 3600);
        const r = await api('POST', '/api/v1/keys', body);
        created.replaceChildren(secretBox(r.secret, 'key-secret', 'key'));
        form.reset();
        await load();
      });
    });
    await load();
  }

  async function pageTokens(main, ctx) {
    title(main, 'API tokens');
    const name = h('input', { id: 'token-name', required: true, maxlength: 200, placeholder: 'e.g. monitoring', testid: 'token-name' });
    const create = h('button.primary', { type: 'submit', testid: 'token-create' }, 'Create token');
    const created = h('div');
    const form = h('form.form-row', { testid: 'token-form' }, h('label', { for: 'token-name' }, 'Name', name), create);
    main.append(h('section.panel', { 'aria-labelledby': 'h-newtoken' },
      h('h2', { id: 'h-newtoken' }, 'New token'),
      h('p.muted', null, 'Scripts call the API with ', h('code', null, 'Authorization: Bearer <token>'), '. See the ', h('a', { href: '/api/v1/docs' }, 'API docs'), '.'),
      form, created));
    const list = table('tokens-table', ['Name', 'Created', 'Last used', 'Status', '']);
    const pagerBox = h('div');
    main.append(h('section.panel', { 'aria-labelledby': 'h-tokens' }, h('h2', { id: 'h-tokens' }, 'Tokens'), list.el, pagerBox));

    const page = Math.max(1, Number(ctx.params.get('page')) || 1);
    async function load() {
      const data = await api('GET', '/api/v1/tokens' + query({ page, per_page: 50 }));
      if (!ctx.alive) return;
      list.tbody._rows = null;
      list.tbody.replaceChildren();
      keyedRows(list.tbody, data.items || [], (t) => t.id, (t, tr) => {
        const st = keyStatus(t);
        tr.dataset.testid = `token-row-${t.id}`;
        if (st !== 'active') tr.className = 'revoked';
        let cell = h('td.muted', null, fmtTime(t.revoked_at_ms));
        if (st === 'active') {
          const btn = h('button.small.danger', { type: 'button', testid: `token-revoke-${t.id}`, 'aria-label': `Revoke token ${t.name}` }, 'Revoke');
          btn.addEventListener('click', () => {
            if (!confirm(`Revoke the token “${t.name}”? Scripts using it get 401 at once.`)) return;
            act(btn, async () => { await api('DELETE', `/api/v1/tokens/${t.id}`); notice(`Token “${t.name}” revoked.`); await load(); });
          });
          cell = h('td', null, btn);
        }
        add(tr, [h('td.wrap', null, t.name), timeCell(t.created_at_ms), timeCell(t.last_used_at_ms), h('td', null, badge(st, `token-status-${t.id}`)), cell]);
        return () => {};
      }, 'No API tokens yet.', 5);
      pagerBox.replaceChildren(pager(data));
    }
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      act(create, async () => {
        const r = await api('POST', '/api/v1/tokens', { name: name.value.trim() });
        created.replaceChildren(secretBox(r.secret, 'token-secret', 'token'));
        form.reset();
        await load();
      });
    });
    await load();
  }

  // ---- audit log ------------------------------------------------------------------------------

  async function pageAudit(main, ctx) {
    title(main, 'Audit log');
    const list = table('audit-table', ['Time', 'Actor', 'Client', 'Action', 'Target', 'Detail']);
    const pagerBox = h('div');
    main.append(h('section.panel', { 'aria-label': 'Audit entries' }, list.el, pagerBox));
    const page = Math.max(1, Number(ctx.params.get('page')) || 1);
    const data = await api('GET', '/api/v1/audit' + query({ page, per_page: 50 }));
    if (!ctx.alive) return;
    keyedRows(list.tbody, data.items || [], (a) => a.id, (a, tr) => {
      tr.dataset.testid = `audit-row-${a.id}`;
      add(tr, [timeCell(a.at_ms), h('td.wrap', null, a.actor), h('td.nowrap', null, a.client || '–'),
        h('td', { 'data-col': 'action' }, h('code', null, a.action)), h('td.wrap', null, a.target || '–'), h('td.wrap', null, a.detail || '')]);
      return () => {};
    }, 'Nothing recorded yet.', 6);
    pagerBox.replaceChildren(pager(data));
  }

  // ---- the panel's start ------------------------------------------------------------------------

  async function startApp() {
    $('#banner-close').addEventListener('click', clearError);
    $('#logout').addEventListener('click', async () => {
      leavePage();
      live.close();
      try {
        await fetch('/admin/logout', { method: 'POST', headers: { 'X-CSRF-Token': csrf }, credentials: 'same-origin', redirect: 'manual' });
      } catch (_) { /* the login page is where we go either way */ }
      location.assign('/admin/login');
    });
    document.addEventListener('click', (ev) => {
      if (ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
      const a = ev.target.closest('a[href]');
      if (!a || a.target || a.hasAttribute('download')) return;
      const u = new URL(a.href, location.href);
      if (u.origin !== location.origin || !/^\/admin(\/|$)/.test(u.pathname) || /^\/admin\/(login|logout|assets)/.test(u.pathname)) return;
      ev.preventDefault();
      if (u.pathname + u.search !== location.pathname + location.search) navigate(u.pathname + u.search);
    });
    window.addEventListener('popstate', render);
    // Ends a running preview's WHEP session when the tab goes away.
    window.addEventListener('pagehide', leavePage);
    window.addEventListener('pageshow', (ev) => { if (ev.persisted) render(); });
    try {
      const s = await api('GET', '/api/v1/session');
      csrf = s.csrf || '';
    } catch (e) {
      $('#main').replaceChildren();
      showError(e);
      return;
    }
    render();
  }

  // ---- login page -----------------------------------------------------------------------------

  function startLogin() {
    const q = new URLSearchParams(location.search);
    const next = q.get('next') || '';
    // Only a panel path: the backend checks too, this keeps the form honest.
    if (/^\/admin\//.test(next) && !next.startsWith('/admin//') && !next.includes('\\')) $('#next').value = next;
    const messages = {
      invalid: 'Wrong password.',
      rate: 'Too many attempts: wait a minute, then try again.',
    };
    const err = q.get('error');
    if (err) setText($('#login-error'), messages[err] || 'Login failed.');
    $('#password').focus();
  }

  // ---- API docs page --------------------------------------------------------------------------

  const METHODS = ['get', 'put', 'post', 'patch', 'delete', 'head', 'options'];
  const anchor = (s) => s.replace(/[^A-Za-z0-9_-]+/g, '-').replace(/^-|-$/g, '');

  function startDocs() {
    const main = $('#main');
    fetch('/api/v1/openapi.json', { credentials: 'same-origin', cache: 'no-store' })
      .then((r) => {
        if (!r.ok) throw new Error(`GET /api/v1/openapi.json: HTTP ${r.status}`);
        return r.json();
      })
      .then((spec) => {
        main.replaceChildren(...renderDocs(spec));
        if (location.hash) { const t = document.getElementById(location.hash.slice(1)); if (t) t.scrollIntoView(); }
      })
      .catch((e) => {
        main.replaceChildren(h('h1', null, 'API docs'), h('p.error-text', { role: 'alert', testid: 'docs-error' }, 'Could not load the API description: ' + e.message));
      });
  }

  function renderDocs(spec) {
    const schemas = (spec.components && spec.components.schemas) || {};
    const refName = (ref) => decodeURIComponent(String(ref).split('/').pop());
    const resolve = (obj) => {
      // Parameters, bodies and responses may be $refs into components too.
      for (let i = 0; obj && obj.$ref && i < 10; i++) {
        const parts = obj.$ref.replace(/^#\//, '').split('/').map((p) => decodeURIComponent(p.replace(/~1/g, '/').replace(/~0/g, '~')));
        obj = parts.reduce((o, p) => (o ? o[p] : undefined), spec);
      }
      return obj || {};
    };

    function typeExpr(s) {
      if (!s || typeof s !== 'object') return 'any';
      if (s.$ref) { const n = refName(s.$ref); return h('a', { href: '#schema-' + anchor(n) }, n); }
      const alts = s.oneOf || s.anyOf;
      if (alts) return joinNodes(alts.map(typeExpr), ' | ');
      if (s.allOf) return joinNodes(s.allOf.map(typeExpr), ' & ');
      const types = Array.isArray(s.type) ? s.type : s.type ? [s.type] : [];
      const parts = types.map((t) => {
        if (t === 'array') return h('span', null, 'array of ', typeExpr(s.items));
        if (t === 'object' && s.additionalProperties && typeof s.additionalProperties === 'object') return h('span', null, 'map of ', typeExpr(s.additionalProperties));
        return t + (s.format && t !== 'null' ? ` (${s.format})` : '');
      });
      if (!parts.length) parts.push(s.properties ? 'object' : s.enum ? 'enum' : 'any');
      const out = joinNodes(parts, ' | ');
      if (s.enum) out.append(': ', joinNodes(s.enum.map((v) => h('code', null, JSON.stringify(v))), ', '));
      return out;
    }
    function joinNodes(nodes, sep) {
      const span = h('span');
      nodes.forEach((n, i) => { if (i) span.append(sep); span.append(n); });
      return span;
    }
    /** Text with `code` spans, the only markup the API's doc comments use. */
    function desc(text) {
      if (!text) return null;
      const p = h('p.desc');
      String(text).split('`').forEach((part, i) => p.append(i % 2 ? h('code', null, part) : part));
      return p;
    }

    /** Properties of an object schema as a table; inline nested objects are expanded below. */
    function schemaBody(s, depth) {
      s = s || {};
      const out = [];
      let props = s.properties, required = s.required || [];
      if (!props && s.allOf) {
        props = {}; required = [];
        for (const part of s.allOf) {
          const r = resolve(part);
          Object.assign(props, r.properties || {});
          required = required.concat(r.required || []);
        }
      }
      if (props && Object.keys(props).length) {
        const tb = h('tbody');
        for (const [pname, p] of Object.entries(props)) {
          const nested = depth < 3 && p && !p.$ref && p.properties ? schemaBody(p, depth + 1) : null;
          tb.append(h('tr', null, h('td', null, h('code', null, pname)), h('td', null, typeExpr(p)),
            h('td', null, required.includes(pname) ? h('span.req', null, 'required') : ''),
            h('td.wrap', null, desc(p && p.description), nested)));
        }
        out.push(h('div.table-wrap', null, h('table', null,
          h('thead', null, h('tr', null, ['Field', 'Type', '', 'Description'].map((x) => h('th', { scope: 'col' }, x)))), tb)));
      } else {
        out.push(h('p', null, typeExpr(s)));
      }
      if (s.example !== undefined) out.push(h('pre', null, JSON.stringify(s.example, null, 2)));
      return out;
    }
    function contentBlock(content) {
      return Object.entries(content || {}).map(([type, media]) => {
        const schema = media.schema;
        return h('div', null, h('p.muted', null, type, ': ', typeExpr(schema)),
          schema && !schema.$ref && (schema.properties || schema.allOf) ? schemaBody(schema, 1) : null,
          media.example !== undefined ? h('pre', null, JSON.stringify(media.example, null, 2)) : null);
      });
    }

    const info = spec.info || {};
    const nodes = [h('h1', null, (info.title || 'API') + (info.version ? ' ' + info.version : '')), desc(info.description)];
    const sec = (spec.components && spec.components.securitySchemes) || {};
    if (Object.keys(sec).length) {
      nodes.push(h('section', { 'aria-labelledby': 'h-auth' }, h('h2', { id: 'h-auth' }, 'Authentication'),
        h('ul', null, Object.entries(sec).map(([k, v]) => h('li', null, h('code', null, k), ': ',
          v.type === 'http' ? `HTTP ${v.scheme || ''}` : v.type === 'apiKey' ? `${v.in} ${v.name}` : v.type,
          v.description ? ' – ' + v.description : '')))));
    }

    const ops = [];
    for (const [path, item] of Object.entries(spec.paths || {})) {
      for (const m of METHODS) if (item[m]) ops.push({ path, method: m, op: item[m], shared: item.parameters || [] });
    }
    const tags = new Map();
    for (const o of ops) {
      const tag = (o.op.tags && o.op.tags[0]) || 'other';
      if (!tags.has(tag)) tags.set(tag, []);
      tags.get(tag).push(o);
    }
    const tagInfo = new Map((spec.tags || []).map((t) => [t.name, t.description]));
    const opId = (o) => 'op-' + o.method + '-' + anchor(o.path);

    nodes.push(h('nav', { 'aria-labelledby': 'h-toc' }, h('h2', { id: 'h-toc' }, 'Endpoints'),
      h('ul.toc', { testid: 'docs-toc' }, ops.map((o) => h('li', null, h('a', { href: '#' + opId(o) },
        h('span.method.m-' + o.method, null, o.method), ' ', h('code', null, o.path)))))));

    for (const [tag, list] of tags) {
      const section = h('section', { 'aria-labelledby': 'tag-' + anchor(tag) }, h('h2', { id: 'tag-' + anchor(tag) }, tag), desc(tagInfo.get(tag)));
      for (const o of list) {
        const op = o.op;
        const el = h('article.op', { id: opId(o), testid: 'docs-op', 'data-method': o.method.toUpperCase(), 'data-path': o.path },
          h('h3', null, h('span.method.m-' + o.method, null, o.method), h('code', null, o.path), op.deprecated ? badge('deprecated') : null),
          op.summary ? h('p', null, h('strong', null, op.summary)) : null,
          op.description && op.description !== op.summary ? desc(op.description) : null);
        const params = o.shared.concat(op.parameters || []).map(resolve);
        if (params.length) {
          el.append(h('h4', null, 'Parameters'), h('div.table-wrap', null, h('table', null,
            h('thead', null, h('tr', null, ['Name', 'In', 'Type', '', 'Description'].map((x) => h('th', { scope: 'col' }, x)))),
            h('tbody', null, params.map((p) => h('tr', null, h('td', null, h('code', null, p.name)), h('td', null, p.in),
              h('td', null, typeExpr(p.schema)), h('td', null, p.required ? h('span.req', null, 'required') : ''),
              h('td.wrap', null, desc(p.description))))))));
        }
        if (op.requestBody) {
          const body = resolve(op.requestBody);
          add(el, [h('h4', null, 'Request body' + (body.required ? ' (required)' : '')), desc(body.description), contentBlock(body.content)]);
        }
        const responses = Object.entries(op.responses || {});
        if (responses.length) {
          el.append(h('h4', null, 'Responses'), h('div.table-wrap', null, h('table', null,
            h('thead', null, h('tr', null, ['Status', 'Description', 'Body'].map((x) => h('th', { scope: 'col' }, x)))),
            h('tbody', null, responses.map(([code, resp]) => {
              const r = resolve(resp);
              return h('tr', null, h('td', null, h('code', null, code)), h('td.wrap', null, desc(r.description)), h('td', null, contentBlock(r.content)));
            })))));
        }
        section.append(el);
      }
      nodes.push(section);
    }

    const names = Object.keys(schemas).sort();
    if (names.length) {
      nodes.push(h('section', { 'aria-labelledby': 'h-schemas' }, h('h2', { id: 'h-schemas' }, 'Schemas'),
        names.map((n) => h('article.schema', { id: 'schema-' + anchor(n), testid: 'docs-schema' },
          h('h3', null, n), desc(schemas[n].description), schemaBody(schemas[n], 1)))));
    }
    return nodes.filter(Boolean);
  }

  // ---- which page -----------------------------------------------------------------------------

  const page = document.body.dataset.page;
  if (page === 'login') startLogin();
  else if (page === 'docs') startDocs();
  else startApp();
})();
