/* Whipcord shared browser helpers (WHIP/WHEP). Plain script, exposes window.Whipcord. */
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);

  /** Stream name = last non-empty path segment, URL-decoded. */
  function streamName() {
    const segs = location.pathname.split('/').filter(Boolean);
    const last = segs.length ? segs[segs.length - 1] : '';
    try { return decodeURIComponent(last); } catch (_) { return last; }
  }

  function authHeaders(token, extra) {
    const h = Object.assign({}, extra || {});
    if (token) h.Authorization = 'Bearer ' + token;
    return h;
  }

  class HttpError extends Error {
    constructor(status, statusText, body) {
      super('HTTP ' + status + (statusText ? ' ' + statusText : '') + (body ? ': ' + body : ''));
      this.name = 'HttpError';
      this.status = status;
      this.body = body;
    }
  }

  /** Parse `Link: <stun:...>; rel="ice-server"; username=..; credential=..` into RTCIceServer[]. */
  function parseIceServers(link) {
    const out = [];
    if (!link) return out;
    // Split on commas outside <...> and "..." (fetch joins repeated headers with ", ").
    const parts = [];
    let cur = '', inUrl = false, inQ = false;
    for (const ch of link) {
      if (ch === '<' && !inQ) inUrl = true;
      else if (ch === '>' && !inQ) inUrl = false;
      else if (ch === '"' && !inUrl) inQ = !inQ;
      if (ch === ',' && !inUrl && !inQ) { parts.push(cur); cur = ''; } else cur += ch;
    }
    parts.push(cur);
    for (const p of parts) {
      const m = /^\s*<([^>]*)>(.*)$/.exec(p);
      if (!m) continue;
      const params = {};
      const re = /;\s*([\w-]+)\s*(?:=\s*(?:"([^"]*)"|([^;\s]*)))?/g;
      let mm;
      while ((mm = re.exec(m[2]))) params[mm[1].toLowerCase()] = mm[2] !== undefined ? mm[2] : (mm[3] || '');
      if (!(params.rel || '').toLowerCase().split(/\s+/).includes('ice-server')) continue;
      if (!/^(stuns?|turns?):/i.test(m[1])) continue;
      const s = { urls: m[1] };
      if (params.username !== undefined) s.username = params.username;
      if (params.credential !== undefined) s.credential = params.credential;
      out.push(s);
    }
    return out;
  }

  // ICE servers learned from a previous answer; reused for later sessions on this page.
  let iceCache = [];
  const cachedIce = () => iceCache.slice();

  /** Resolve when ICE gathering completes, or after `ms` at most. */
  function waitIce(pc, ms) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        pc.removeEventListener('icegatheringstatechange', chk);
        pc.removeEventListener('icecandidate', cand);
        resolve();
      };
      const chk = () => { if (pc.iceGatheringState === 'complete') done(); };
      const cand = (e) => { if (!e.candidate) done(); };
      const t = setTimeout(done, ms || 2000);
      pc.addEventListener('icegatheringstatechange', chk);
      pc.addEventListener('icecandidate', cand);
    });
  }

  /**
   * Offer/answer exchange against a WHIP or WHEP endpoint.
   * Returns {location, iceServers}. Throws HttpError on non-201.
   */
  async function negotiate(pc, url, token) {
    await pc.setLocalDescription(await pc.createOffer());
    await waitIce(pc, 2000);
    const res = await fetch(url, {
      method: 'POST',
      headers: authHeaders(token, { 'Content-Type': 'application/sdp' }),
      body: pc.localDescription.sdp,
      cache: 'no-store',
      signal: window.AbortSignal && AbortSignal.timeout ? AbortSignal.timeout(15000) : undefined,
    });
    const body = await res.text();
    if (res.status !== 201) {
      const e = new HttpError(res.status, res.statusText, body.trim().slice(0, 500));
      if (res.status >= 200 && res.status < 300) e.message += ' (expected 201 Created)';
      throw e;
    }
    if (!body.trim()) throw new Error('201 response had an empty SDP answer');
    const loc = res.headers.get('Location');
    const location_ = loc ? new URL(loc, window.location.href).href : null;
    if (!loc) console.warn('WHIP/WHEP: no Location header in 201 response');
    const ice = parseIceServers(res.headers.get('Link'));
    if (ice.length) {
      iceCache = ice;
      try { pc.setConfiguration(Object.assign(pc.getConfiguration(), { iceServers: ice })); }
      catch (e) { console.warn('setConfiguration failed', e); }
    }
    if (pc.signalingState === 'closed') throw new Error('peer connection closed during negotiation');
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
    return { location: location_, iceServers: ice };
  }

  /** Best-effort DELETE of a WHIP/WHEP session resource. Returns Response or null. */
  async function deleteResource(url, token, keepalive) {
    if (!url) return null;
    return fetch(url, { method: 'DELETE', headers: authHeaders(token), keepalive: !!keepalive });
  }

  // ---- codecs ----
  const AUX = /^(video|audio)\/(rtx|red|ulpfec|flexfec-03)$/i;

  function capabilities(kind) {
    const out = [];
    for (const C of [window.RTCRtpSender, window.RTCRtpReceiver]) {
      try { const c = C && C.getCapabilities && C.getCapabilities(kind); if (c) out.push(c.codecs); } catch (_) { /* ignore */ }
    }
    return out;
  }

  /** True when the browser can send (or at least knows) codec `name` (e.g. "H264"). */
  function hasCodec(name, kind) {
    kind = kind || 'video';
    const mime = (kind + '/' + name).toLowerCase();
    const caps = capabilities(kind);
    return caps.length ? caps[0].some((c) => c.mimeType.toLowerCase() === mime) : false;
  }

  function h264Rank(c) {
    const f = c.sdpFmtpLine || '';
    let r = 0;
    if (!/packetization-mode=1/.test(f)) r += 4;
    if (!/profile-level-id=42e0/i.test(f)) r += 2;
    if (!/profile-level-id=42/i.test(f)) r += 1;
    return r;
  }

  /** Restrict a transceiver to codec `name` (+ rtx/red/fec). Returns true on success. */
  function preferCodec(transceiver, name) {
    if (!transceiver.setCodecPreferences) return false;
    const kind = transceiver.receiver.track.kind;
    const mime = (kind + '/' + name).toLowerCase();
    for (const codecs of capabilities(kind)) {
      const main = codecs.filter((c) => c.mimeType.toLowerCase() === mime);
      if (!main.length) continue;
      if (/h264/i.test(name)) main.sort((a, b) => h264Rank(a) - h264Rank(b));
      try {
        transceiver.setCodecPreferences(main.concat(codecs.filter((c) => AUX.test(c.mimeType))));
        return true;
      } catch (e) { console.warn('setCodecPreferences failed', e); }
    }
    return false;
  }

  // ---- formatting / stats ----
  function fmtBitrate(bps) {
    if (!isFinite(bps) || bps <= 0) return '0 kbit/s';
    return bps >= 1e6 ? (bps / 1e6).toFixed(2) + ' Mbit/s' : (bps / 1e3).toFixed(0) + ' kbit/s';
  }

  function fmtDuration(s) {
    s = Math.max(0, Math.floor(s || 0));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const pad = (n) => String(n).padStart(2, '0');
    return (h ? h + ':' + pad(m) : m) + ':' + pad(sec);
  }

  function codecLabel(c) {
    if (!c) return '';
    let l = c.mimeType.split('/')[1] || c.mimeType;
    const p = /profile-level-id=([0-9a-f]{6})/i.exec(c.sdpFmtpLine || '');
    if (p) l += ' (' + p[1] + ')';
    return l;
  }

  /** Decode a data-channel message to {from, text}. Accepts plain text or JSON {from|user|name, text|message|msg}. */
  function chatMessage(data) {
    let s = typeof data === 'string' ? data : new TextDecoder().decode(data);
    if (/^\s*\{/.test(s)) {
      try {
        const j = JSON.parse(s);
        const text = j.text ?? j.message ?? j.msg;
        if (text !== undefined) return { from: String(j.from ?? j.user ?? j.name ?? ''), text: String(text) };
      } catch (_) { /* plain text */ }
    }
    return { from: '', text: s };
  }

  window.Whipcord = {
    $, streamName, authHeaders, HttpError, parseIceServers, cachedIce, waitIce, negotiate,
    deleteResource, hasCodec, preferCodec, fmtBitrate, fmtDuration, codecLabel, chatMessage,
  };
})();
