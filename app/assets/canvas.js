// The annotation canvas (gr.HTML js_on_load: `element`, `trigger`, `props`, `watch` are given).
//
// The server sends data (app/canvas_sync.py): the photo once per image, the segment map as an index
// map at full resolution (then patches of the box that changed), the segment table. Everything the
// annotator sees is composed here, one pass over the *screen* pixels per repaint (so its cost does not
// grow with the photo): overlay colour, outlines, selection, hover, previews. Opacity, outlines,
// labels, hover, selection, zoom and the task switch need no server round trip.
//
// Test contract: the root (#canvas) carries data-task, data-image, data-segments (segments shown),
// data-rendered (grows on every repaint), data-zoom, data-offset-x, data-offset-y (CSS px: image pixel
// (x, y) is at client (rect.left + offset_x + x * zoom, rect.top + offset_y + y * zoom) of the
// .m2f-ui canvas), data-selected, data-tool; window.m2fCanvas.imageToClient(x, y) does the same.

const root = element.closest('#canvas') || element;
const $ = (sel) => element.querySelector(sel);
const stage = $('.m2f-stage');
const photoCanvas = $('.m2f-photo'), overlayCanvas = $('.m2f-overlay'), uiCanvas = $('.m2f-ui');
const photoCtx = photoCanvas.getContext('2d');
const overlayCtx = overlayCanvas.getContext('2d');
const uiCtx = uiCanvas.getContext('2d');
const info = $('.m2f-info'), help = $('.m2f-help'), candBox = $('#recover'), colorbar = $('.m2f-colorbar');

const TASKS = ['panoptic', 'instance', 'semantic'];
const TASK_LABELS = {panoptic: 'Panoptic', instance: 'Instance', semantic: 'Semantic'};
const S = {
  key: null, name: '', W: 0, H: 0, photo: null, ids: null, version: 0, segs: [], byIndex: new Map(), byId: new Map(),
  classes: {names: [], colors: [], thing: []}, task: 'panoptic', selected: [], opacity: 0.5, outline: true,
  labels: false, unc: false, uncMap: null, gt: false, gtData: null, hasGt: false, cands: [], candHover: -1, wand: null,
  wandAt: null, wandThr: 0.5, wandPending: false, wandQueued: null, tool: 'select', brush: 20, hover: 0, z: 1, ox: 0,
  oy: 0, fitted: true, stroke: null, poly: [], polyCursor: null, cursor: null, space: false, drag: null,
  rendered: 0, dpr: 1, cw: 0, ch: 0,
};
let queue = Promise.resolve();
let frame = 0;
function send(name, data) {  // an event for the server; its answer comes back as a new value
  S.sentAt = performance.now();
  trigger(name, data);
}

// ------------------------------------------------------------------------------------------ decoding
async function inflate(b64) {
  const bytes = await (await fetch('data:application/octet-stream;base64,' + b64)).arrayBuffer();
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
  return new Response(stream).arrayBuffer();
}
async function decodeMap(p) {  // -> {x, y, w, h, data: Uint32Array | Uint8Array}
  const buf = await inflate(p.data);
  const data = p.dtype === 'u16' ? new Uint16Array(buf) : p.dtype === 'u32' ? new Uint32Array(buf) : new Uint8Array(buf);
  const [x, y, w, h] = p.box;
  return {x, y, w, h, data};
}
function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error('the photo could not be decoded'));
    img.src = src;
  });
}

// ------------------------------------------------------------------------------------------ payloads
async function apply(p) {
  if (!p || typeof p !== 'object') return;
  const arrived = performance.now();
  if (S.sentAt) { S.lastAnswer = {server: arrived - S.sentAt}; S.sentAt = 0; }
  if (p.empty) {  // no image open
    S.key = null; S.ids = null; S.photo = null; S.segs = []; indexSegments();
    $('.m2f-empty').hidden = false; requestRender(); return;
  }
  if (p.image) {  // a new image: photo, full map, classes
    const [photo, map] = await Promise.all([loadImage(p.image.src), decodeMap(p.map)]);
    S.photo = photo; S.key = p.image.key; S.W = p.size[0]; S.H = p.size[1];
    S.ids = new Uint32Array(S.W * S.H); S.ids.set(map.data); S.version = p.map.version;
    S.fullAsked = false;  // a new image starts from its display copy
    S.uncMap = null; S.gtData = null; S.cands = []; S.wand = null; S.wandAt = null; S.poly = []; S.stroke = null;
    if (p.classes) S.classes = p.classes;
    S.fitted = true;
    $('.m2f-empty').hidden = true;
  } else if (p.map) {
    if (!S.ids || p.map.base !== S.version) { send('resync', {have: S.version}); return; }
    const m = await decodeMap(p.map);
    for (let r = 0; r < m.h; r++) S.ids.set(m.data.subarray(r * m.w, (r + 1) * m.w), (m.y + r) * S.W + m.x);
    S.version = p.map.version;
  }
  if (p.photo_full && p.photo_full.key === S.key) S.photo = await loadImage(p.photo_full.src);
  if (p.name !== undefined) S.name = p.name;
  if (p.segments) { S.segs = p.segments; indexSegments(); }
  if (p.task && !S.taskOverride) S.task = p.task;
  if (p.task === S.taskOverride) S.taskOverride = null;
  if (p.selected && (p.selection_seq || 0) >= (S.selSeq || 0)) S.selected = p.selected.filter((id) => S.byId.has(id));
  if (p.uncertainty) { const m = await decodeMap(p.uncertainty); S.uncMap = m.data; }
  if (p.show_uncertainty !== undefined) { S.unc = !!p.show_uncertainty && !!S.uncMap; }
  if (p.ground_truth) {
    const g = p.ground_truth;
    S.gtData = g.map ? {ids: (await decodeMap(g.map)).data, segs: g.segments} : {missing: g.missing};
  }
  if (p.has_ground_truth !== undefined) S.hasGt = !!p.has_ground_truth;
  S.cands = await Promise.all((p.candidates || []).map(async (c) => ({...c, mask: await decodeMap(c.mask)})));
  S.candHover = S.cands.length ? 0 : -1;
  S.wand = p.wand ? {...p.wand, mask: await decodeMap(p.wand.mask)} : null;
  // the server's threshold, unless the wheel moved on while it answered (a request is queued: keep the newer)
  if (p.wand && !S.wandQueued) S.wandThr = p.wand.threshold;
  if (S.stroke && S.stroke.sent) S.stroke = null;  // an answer never cancels a stroke being drawn
  if (S.cursor) S.hover = indexAt(...S.cursor);  // the map under a still cursor may have changed
  showInfo(S.hover);  // and the hover text follows edits
  if (S.wandQueued) { const q = S.wandQueued; S.wandQueued = null; send('wand', q); } else S.wandPending = false;
  syncControls();
  renderCandidates();
  if (S.fitted) fit();
  renderNow();
}

function indexSegments() {
  S.byIndex = new Map(); S.byId = new Map();
  for (const s of S.segs) { S.byIndex.set(s.i, s); S.byId.set(s.id, s); }
}

watch('value', () => { const p = props.value; queue = queue.then(() => apply(p)).catch((e) => console.error(e)); });

// ------------------------------------------------------------------------------------------ view geometry
function resize() {
  const r = stage.getBoundingClientRect();
  S.dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(r.width * S.dpr)), h = Math.max(1, Math.round(r.height * S.dpr));
  if (w === S.cw && h === S.ch) return;
  S.cw = w; S.ch = h;
  for (const c of [photoCanvas, overlayCanvas, uiCanvas]) { c.width = w; c.height = h; }
  if (S.fitted) fit();
  renderNow();
}
function fit() {
  if (!S.W) return;
  S.z = Math.min(S.cw / S.W, S.ch / S.H);
  S.ox = (S.cw - S.W * S.z) / 2; S.oy = (S.ch - S.H * S.z) / 2; S.fitted = true;
}
function oneToOne() {
  if (!S.W) return;
  const cx = S.cw / 2, cy = S.ch / 2, ix = (cx - S.ox) / S.z, iy = (cy - S.oy) / S.z;
  S.z = S.dpr; S.ox = cx - ix * S.z; S.oy = cy - iy * S.z; S.fitted = false;
}
function zoomAt(sx, sy, factor) {
  const z = Math.min(64 * S.dpr, Math.max(Math.min(S.cw / S.W, S.ch / S.H) / 4, S.z * factor));
  S.ox = sx - (sx - S.ox) * z / S.z; S.oy = sy - (sy - S.oy) * z / S.z; S.z = z; S.fitted = false;
}
function screenPoint(e) {  // backing-store pixels of the stage
  const r = uiCanvas.getBoundingClientRect();
  return [(e.clientX - r.left) * S.dpr, (e.clientY - r.top) * S.dpr];
}
function toImage(sx, sy) { return [(sx - S.ox) / S.z, (sy - S.oy) / S.z]; }
function indexAt(ix, iy) {
  const x = Math.floor(ix), y = Math.floor(iy);
  if (!S.ids || x < 0 || y < 0 || x >= S.W || y >= S.H) return 0;
  return S.ids[y * S.W + x];
}

// ------------------------------------------------------------------------------------------ colours
const INFERNO = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
  [250, 193, 39], [252, 255, 164]];
const UNC_LUT = (() => {  // 256 RGBA (alpha filled at render time), the colour bar uses the same stops
  const lut = new Array(256);
  for (let v = 0; v < 256; v++) {
    const t = v / 255 * (INFERNO.length - 1), i = Math.min(INFERNO.length - 2, Math.floor(t)), f = t - i;
    lut[v] = INFERNO[i].map((c, k) => Math.round(c + (INFERNO[i + 1][k] - c) * f));
  }
  return lut;
})();
$('.m2f-colorbar-bar').style.background = `linear-gradient(to right, ${INFERNO.map((c) => `rgb(${c})`).join(',')})`;
const pack = (r, g, b, a) => ((a << 24) | (b << 16) | (g << 8) | r) >>> 0;

function shownIn(task, seg) { return task !== 'instance' || seg.t; }
function segColor(task, seg) { return task === 'semantic' ? (S.classes.colors[seg.c] || [255, 0, 0]) : seg.col; }

function luts(segs, task, n, selected, alphaFill) {  // per index: fill colour, outline colour, outline group, selected
  const fill = new Uint32Array(n + 1), edge = new Uint32Array(n + 1), group = new Int32Array(n + 1).fill(-1);
  const sel = new Uint8Array(n + 1), dim = selected.length > 0;
  const chosen = new Set(selected);
  group[0] = -1;
  for (const s of segs) {
    if (s.i > n) continue;
    sel[s.i] = chosen.has(s.id) ? 1 : 0;
    if (!shownIn(task, s)) { group[s.i] = -1; continue; }
    const [r, g, b] = segColor(task, s);
    group[s.i] = task === 'semantic' ? s.c : s.i;
    fill[s.i] = pack(r, g, b, Math.round(255 * alphaFill));
    edge[s.i] = pack(r, g, b, 255);
  }
  if (dim) {  // outside the selection: the overlay composited over black at 45 %: one colour, one alpha
    for (let i = 0; i <= n; i++) {
      if (sel[i]) continue;
      const c = fill[i], a = (c >>> 24) / 255, d = 0.55, A = 1 - (1 - d) * (1 - a);
      const k = A > 0 ? (1 - d) * a / A : 0;
      fill[i] = pack(Math.round((c & 255) * k), Math.round(((c >>> 8) & 255) * k), Math.round(((c >>> 16) & 255) * k),
        Math.round(255 * A));
    }
  }
  return {fill, edge, group, sel, dim};
}

// ------------------------------------------------------------------------------------------ rendering
function requestRender() { if (!frame) frame = requestAnimationFrame(render); }
function renderNow() {  // a discrete action (key, click, slider): draw in this event, not the next frame
  if (frame) { cancelAnimationFrame(frame); frame = 0; }
  render();
}

function render() {
  frame = 0;
  resize();
  const {cw, ch} = S;
  photoCtx.setTransform(1, 0, 0, 1, 0, 0); photoCtx.clearRect(0, 0, cw, ch);
  if (!S.imageData || S.imageData.width !== cw || S.imageData.height !== ch) S.imageData = overlayCtx.createImageData(cw, ch);
  const img = S.imageData;
  new Uint32Array(img.data.buffer).fill(0);
  if (S.photo && S.ids) {
    photoCtx.imageSmoothingEnabled = S.z < S.dpr * 2;
    if (!S.fullAsked && S.photo.naturalWidth < S.W && S.z * S.W / S.photo.naturalWidth > S.dpr) {
      S.fullAsked = true;  // zoomed in past the display copy: the full-size photo, once per image
      send('view', {full_photo: true});
    }
    photoCtx.drawImage(S.photo, S.ox, S.oy, S.W * S.z, S.H * S.z);
    composeOverlay(new Uint32Array(img.data.buffer));
  }
  overlayCtx.putImageData(img, 0, 0);
  drawUi();
  S.rendered += 1;
  publish();
}

function composeOverlay(out) {
  const {cw, ch, W, H, z, ox, oy} = S;
  const xs = new Int32Array(cw + 1).fill(-1), ys = new Int32Array(ch + 1).fill(-1);
  for (let sx = 0; sx < cw; sx++) { const ix = Math.floor((sx + 0.5 - ox) / z); if (ix >= 0 && ix < W) xs[sx] = ix; }
  for (let sy = 0; sy < ch; sy++) { const iy = Math.floor((sy + 0.5 - oy) / z); if (iy >= 0 && iy < H) ys[sy] = iy; }
  const showGt = S.gt && S.gtData && S.gtData.ids;
  const ids = showGt ? S.gtData.ids : S.ids;
  const segs = showGt ? S.gtData.segs : S.segs;
  let n = 0;
  for (const s of segs) n = Math.max(n, s.i);
  const L = luts(segs, showGt ? 'panoptic' : S.task, n, showGt ? [] : S.selected, S.opacity);
  const hover = showGt ? 0 : S.hover;
  const outline = S.outline;
  // the uncertainty view: the model's hesitation instead of the classes
  const unc = S.unc && S.uncMap && !showGt ? S.uncMap : null;
  const uncLut = unc ? UNC_LUT.map(([r, g, b]) => pack(r, g, b, Math.round(255 * Math.max(0.15, S.opacity)))) : null;
  // the ground-truth view: where its class differs from the annotation's, outlined in red
  let predCls = null, gtCls = null;
  if (showGt) {
    predCls = new Int32Array(Math.max(...S.segs.map((s) => s.i), 0) + 1).fill(-1);
    for (const s of S.segs) predCls[s.i] = s.c;
    gtCls = new Int32Array(n + 1).fill(-1);
    for (const s of segs) gtCls[s.i] = s.model_class;
  }
  const previews = [];
  if (S.wand) previews.push({m: S.wand.mask, fill: pack(0, 255, 255, 140), edge: pack(0, 255, 255, 255)});
  if (S.candHover >= 0 && S.cands[S.candHover]) {
    previews.push({m: S.cands[S.candHover].mask, fill: pack(255, 0, 255, 130), edge: pack(255, 255, 255, 255)});
  }
  const WHITE = pack(255, 255, 255, 255), YELLOW = pack(255, 221, 0, 255), RED = pack(255, 32, 32, 255);
  const diffAt = (p) => { const g = gtCls[ids[p]]; return g >= 0 && predCls[S.ids[p]] !== g; };
  const fill = L.fill, edge = L.edge, group = L.group, sel = L.sel, anySel = L.dim || hover > 0;
  for (let sy = 0; sy < ch; sy++) {
    const iy = ys[sy];
    if (iy < 0) continue;
    const row = iy * W, rowOut = sy * cw;
    const iyb = ys[sy + 1], iyt = sy > 0 ? ys[sy - 1] : -1, rowB = iyb * W, rowT = iyt * W;
    for (let sx = 0; sx < cw; sx++) {  // the hot loop: typed-array reads only, no allocation
      const ix = xs[sx];
      if (ix < 0) continue;
      const p = row + ix, idx = ids[p];
      let c = unc ? uncLut[unc[p]] : fill[idx];
      const ixr = xs[sx + 1];
      if (outline) {
        const g = group[idx];
        if (g >= 0 && ((ixr >= 0 && group[ids[row + ixr]] !== g) || (iyb >= 0 && group[ids[rowB + ix]] !== g))) {
          c = edge[idx];
        }
      }
      if (anySel && (sel[idx] || idx === hover) && idx) {  // selection: white, hover: yellow, 2 px wide
        const ixl = sx > 0 ? xs[sx - 1] : -1;
        if ((ixl >= 0 && ids[row + ixl] !== idx) || (iyt >= 0 && ids[rowT + ix] !== idx)
            || (ixr >= 0 && ids[row + ixr] !== idx) || (iyb >= 0 && ids[rowB + ix] !== idx)) {
          c = sel[idx] ? WHITE : YELLOW;
        }
      }
      out[rowOut + sx] = c;
    }
  }
  if (showGt) {  // the ground truth's disagreement with the annotation, outlined in red
    for (let sy = 0; sy < ch; sy++) {
      const iy = ys[sy], iyb = ys[sy + 1];
      if (iy < 0) continue;
      for (let sx = 0; sx < cw; sx++) {
        const ix = xs[sx], ixr = xs[sx + 1];
        if (ix < 0) continue;
        const d = diffAt(iy * W + ix);
        if ((ixr >= 0 && diffAt(iy * W + ixr) !== d) || (iyb >= 0 && diffAt(iyb * W + ix) !== d)) out[sy * cw + sx] = RED;
      }
    }
  }
  for (const pv of previews) {  // wand / candidate: only the screen pixels over the mask's box
    const m = pv.m;
    const sx0 = Math.max(0, Math.floor(ox + m.x * z)), sx1 = Math.min(cw, Math.ceil(ox + (m.x + m.w) * z));
    const sy0 = Math.max(0, Math.floor(oy + m.y * z)), sy1 = Math.min(ch, Math.ceil(oy + (m.y + m.h) * z));
    const inside = (x, y) => x >= 0 && y >= 0 && x < m.w && y < m.h && m.data[y * m.w + x];
    for (let sy = sy0; sy < sy1; sy++) {
      const my = ys[sy] - m.y, myb = ys[sy + 1] - m.y;
      if (ys[sy] < 0) continue;
      for (let sx = sx0; sx < sx1; sx++) {
        const mx = xs[sx] - m.x;
        if (xs[sx] < 0 || !inside(mx, my)) continue;
        const inR = xs[sx + 1] >= 0 && inside(xs[sx + 1] - m.x, my), inB = ys[sy + 1] >= 0 && inside(mx, myb);
        out[sy * cw + sx] = inR && inB ? pv.fill : pv.edge;
      }
    }
  }
}

function drawUi() {
  const ctx = uiCtx;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, S.cw, S.ch);
  if (!S.ids) return;
  if (S.labels && !(S.gt && S.gtData && S.gtData.ids)) {
    ctx.font = `${Math.round(12 * S.dpr)}px sans-serif`; ctx.textAlign = 'center'; ctx.textBaseline = 'middle';
    const seen = new Set();
    for (const s of S.segs) {
      if (!shownIn(S.task, s) || s.b[2] * S.z < 24 * S.dpr) continue;
      if (S.task === 'semantic') { if (seen.has(s.c)) continue; seen.add(s.c); }
      const x = S.ox + (s.b[0] + s.b[2] / 2) * S.z, y = S.oy + (s.b[1] + s.b[3] / 2) * S.z;
      const text = S.classes.names[s.c] || String(s.c);
      const w = ctx.measureText(text).width + 8 * S.dpr;
      ctx.fillStyle = 'rgba(0,0,0,0.6)'; ctx.fillRect(x - w / 2, y - 9 * S.dpr, w, 18 * S.dpr);
      ctx.fillStyle = '#fff'; ctx.fillText(text, x, y);
    }
  }
  const toS = ([x, y]) => [S.ox + x * S.z, S.oy + y * S.z];
  if (S.stroke && S.stroke.points.length) {  // the stroke being drawn (until the server's answer replaces it)
    ctx.strokeStyle = S.stroke.tool === 'eraser' ? 'rgba(255,255,255,0.55)' : 'rgba(255,0,255,0.55)';
    ctx.fillStyle = ctx.strokeStyle;
    ctx.lineWidth = Math.max(1, S.stroke.radius * 2 * S.z); ctx.lineCap = 'round'; ctx.lineJoin = 'round';
    ctx.beginPath();
    S.stroke.points.forEach((pt, i) => { const [x, y] = toS([pt[0] + 0.5, pt[1] + 0.5]); i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
    if (S.stroke.points.length === 1) ctx.lineTo(...toS([S.stroke.points[0][0] + 0.5, S.stroke.points[0][1] + 0.5]));
    ctx.stroke();
  }
  if (S.poly.length) {
    ctx.strokeStyle = '#00ffff'; ctx.lineWidth = 2 * S.dpr; ctx.fillStyle = 'rgba(0,255,255,0.2)';
    ctx.beginPath();
    S.poly.forEach((pt, i) => { const [x, y] = toS(pt); i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
    if (S.polyCursor) ctx.lineTo(...toS(S.polyCursor));
    ctx.closePath(); ctx.fill(); ctx.stroke();
    for (const pt of S.poly) { const [x, y] = toS(pt); ctx.fillStyle = '#00ffff'; ctx.fillRect(x - 3, y - 3, 6, 6); }
  }
  if (S.cursor && (S.tool === 'brush' || S.tool === 'eraser')) {  // the brush footprint at the cursor
    const [x, y] = toS(S.cursor);
    ctx.strokeStyle = '#fff'; ctx.lineWidth = 1.5 * S.dpr;
    ctx.beginPath(); ctx.arc(x, y, Math.max(1, S.brush / 2 * S.z), 0, 2 * Math.PI); ctx.stroke();
    ctx.strokeStyle = '#000'; ctx.lineWidth = 0.75 * S.dpr; ctx.stroke();
  }
}

// ------------------------------------------------------------------------------------------ page state
function shownSegments() {
  if (S.gt && S.gtData && S.gtData.ids) return S.gtData.segs.length;
  if (S.task === 'semantic') return new Set(S.segs.map((s) => s.c)).size;
  return S.segs.filter((s) => shownIn(S.task, s)).length;
}
function publish() {
  const d = root.dataset;
  d.task = S.task; d.image = S.name || ''; d.segments = String(S.ids ? shownSegments() : 0);
  d.rendered = String(S.rendered); d.zoom = String(S.z / S.dpr);
  d.offsetX = String(S.ox / S.dpr); d.offsetY = String(S.oy / S.dpr);
  d.selected = S.selected.join(','); d.tool = S.tool; d.version = String(S.version);
  d.hover = String(S.byIndex.get(S.hover)?.id ?? '');
  d.view = S.gt && S.gtData && S.gtData.ids ? 'ground-truth' : S.unc ? 'uncertainty' : 'annotation';
  d.candidates = String(S.cands.length); d.wandArea = String(S.wand ? S.wand.mask_area || 0 : 0);
}
window.m2fCanvas = {
  imageToClient(x, y) {
    const r = uiCanvas.getBoundingClientRect();
    return [r.left + (S.ox + x * S.z) / S.dpr, r.top + (S.oy + y * S.z) / S.dpr];
  },
  state: S,
  settled: () => queue.then(() => true),  // resolves once every payload received so far is drawn
};

function syncControls() {
  $('#opacity').value = S.opacity; $('#outline').checked = S.outline; $('#labels').checked = S.labels;
  $('#uncertainty').checked = S.unc; $('#gt').checked = S.gt; $('#brush').value = S.brush;
  $('.m2f-brush-value').textContent = String(S.brush);
  $('#wand-threshold').value = S.wandThr; $('.m2f-thr-value').textContent = S.wandThr.toFixed(2);
  element.querySelectorAll('[data-tool]').forEach((b) => b.classList.toggle('active', b.dataset.tool === S.tool));
  element.querySelectorAll('.m2f-wand-only').forEach((e) => { e.hidden = S.tool !== 'wand'; });
  element.querySelectorAll('.m2f-gt-toggle').forEach((e) => { e.hidden = !S.hasGt; });
  colorbar.hidden = !S.unc;
  uiCanvas.style.cursor = S.tool === 'select' ? 'default' : S.tool === 'brush' || S.tool === 'eraser' ? 'none' : 'crosshair';
}

function renderCandidates() {
  candBox.innerHTML = '';
  candBox.hidden = S.cands.length === 0;
  if (!S.cands.length) return;
  const title = document.createElement('div');
  title.textContent = 'Recover (hover to preview, click to add):';
  candBox.appendChild(title);
  S.cands.forEach((c, i) => {
    const b = document.createElement('button');
    b.type = 'button'; b.className = 'm2f-candidate' + (i === S.candHover ? ' active' : '');
    b.dataset.index = String(i);
    b.textContent = `${S.classes.names[c.c] || c.c} ${c.s.toFixed(2)} · ${c.mask_area} px`;
    b.addEventListener('mouseenter', () => {  // preview it on the canvas (the buttons stay: no re-render)
      S.candHover = i;
      candBox.querySelectorAll('.m2f-candidate').forEach((o) => o.classList.toggle('active', o === b));
      requestRender();
    });
    b.addEventListener('click', () => { send('recover', {index: c.index, overwrite: $('#overwrite').checked}); });
    candBox.appendChild(b);
  });
}

function showInfo(idx) {
  const s = S.byIndex.get(idx);
  if (!s) { info.textContent = ''; info.hidden = true; return; }
  const name = S.classes.names[s.c] || String(s.c);
  info.hidden = false;
  info.textContent = `#${s.id} ${name} · ${s.t ? 'thing' : 'stuff'} · score ${s.s.toFixed(2)} · ${s.a} px`;
}

// ------------------------------------------------------------------------------------------ actions
function setTool(tool) {
  S.tool = tool; S.poly = []; S.polyCursor = null;
  if (tool !== 'wand' && S.wand) { S.wand = null; S.wandAt = null; }
  syncControls(); requestRender();
}
function setTask(task) {
  if (!TASKS.includes(task) || task === S.task) return;
  S.task = task; S.taskOverride = task;
  renderNow();
  const label = TASK_LABELS[task];  // the page's task control follows (and tells the server)
  const input = Array.from(document.querySelectorAll('#task input')).find((i) => i.value === label);
  if (input) input.click();
}
function sendSelection() {  // numbered: an answer to an older event never undoes a newer local selection
  S.selSeq = (S.selSeq || 0) + 1;
  send('pick', {ids: S.selected, seq: S.selSeq});
}
function action(op, extra = {}) { send('action', {op, ids: S.selected, ...extra}); }
function pageButton(id) { const b = document.querySelector(`#${id}`); if (b) b.click(); }
function finishPolygon() {
  if (S.poly.length >= 3) send('polygon', {points: S.poly, ids: S.selected, overwrite: $('#overwrite').checked});
  S.poly = []; S.polyCursor = null; requestRender();  // the answer draws the new segment
}
function wandAt(x, y) {
  const msg = {x, y, threshold: S.wandThr};
  S.wandAt = [x, y];
  if (S.wandPending) { S.wandQueued = msg; return; }
  S.wandPending = true; send('wand', msg);
}

// ------------------------------------------------------------------------------------------ pointer
uiCanvas.addEventListener('contextmenu', (e) => e.preventDefault());
uiCanvas.addEventListener('pointerdown', (e) => {
  if (!S.ids) return;
  uiCanvas.setPointerCapture(e.pointerId);
  element.querySelector('.m2f-canvas').focus({preventScroll: true});
  const [sx, sy] = screenPoint(e), [ix, iy] = toImage(sx, sy);
  const pan = e.button === 1 || (e.button === 0 && S.space);
  S.drag = {sx, sy, ox: S.ox, oy: S.oy, pan, moved: false, button: e.button};
  if (pan || e.button !== 0) return;
  if (S.tool === 'brush' || S.tool === 'eraser') {
    S.stroke = {tool: S.tool, radius: S.brush / 2, points: [[Math.floor(ix), Math.floor(iy)]]};
    drawUi();
  }
});
uiCanvas.addEventListener('pointermove', (e) => {
  if (!S.ids) return;
  const [sx, sy] = screenPoint(e), [ix, iy] = toImage(sx, sy);
  S.cursor = [ix, iy];
  const d = S.drag;
  if (d) {
    if (Math.abs(sx - d.sx) + Math.abs(sy - d.sy) > 4 * S.dpr) d.moved = true;
    if (d.pan || (S.tool === 'select' && d.moved && d.button === 0)) {
      d.pan = true; S.ox = d.ox + sx - d.sx; S.oy = d.oy + sy - d.sy; S.fitted = false; requestRender(); return;
    }
    if (S.stroke) {
      const last = S.stroke.points[S.stroke.points.length - 1], x = Math.floor(ix), y = Math.floor(iy);
      if (Math.hypot(x - last[0], y - last[1]) >= Math.max(1, S.stroke.radius / 4)) S.stroke.points.push([x, y]);
      drawUi(); return;
    }
  }
  if (S.tool === 'polygon' && S.poly.length) { S.polyCursor = [ix, iy]; }
  const idx = indexAt(ix, iy);
  if (idx !== S.hover) { S.hover = idx; showInfo(idx); renderNow(); } else drawUi();
});
uiCanvas.addEventListener('pointerleave', () => { S.cursor = null; S.hover = 0; showInfo(0); requestRender(); });
uiCanvas.addEventListener('pointerup', (e) => {
  const d = S.drag; S.drag = null;
  if (!S.ids || !d || d.pan || e.button !== 0) return;
  const [sx, sy] = screenPoint(e), [ix, iy] = toImage(sx, sy);
  const x = Math.floor(ix), y = Math.floor(iy);
  if (S.stroke) {
    const st = S.stroke, last = st.points[st.points.length - 1];
    if (x !== last[0] || y !== last[1]) st.points.push([x, y]);  // where the button was released
    send('stroke', {tool: st.tool, points: st.points, radius: st.radius, ids: S.selected,
      overwrite: $('#overwrite').checked, fill: $('#erase-fill').value});
    st.sent = true;  // its preview stays until the answer replaces it
    return;
  }
  if (x < 0 || y < 0 || x >= S.W || y >= S.H) return;
  if (S.tool === 'select') {
    const s = S.byIndex.get(indexAt(ix, iy));
    const add = e.shiftKey || $('#multi-select').checked;
    if (!s) { if (!add) S.selected = []; } else if (add) {
      S.selected = S.selected.includes(s.id) ? S.selected.filter((i) => i !== s.id) : [...S.selected, s.id];
    } else S.selected = [s.id];
    renderNow(); sendSelection();
  } else if (S.tool === 'polygon') {
    S.poly.push([ix, iy]); drawUi();
  } else if (S.tool === 'wand') {
    wandAt(x, y);
  } else if (S.tool === 'recover') {
    send('recover_at', {x, y});
  }
});
uiCanvas.addEventListener('dblclick', (e) => {
  if (S.tool === 'polygon') {
    e.preventDefault();
    S.poly.pop();  // the double-click's second click added a duplicate vertex
    finishPolygon();
  }
});
uiCanvas.addEventListener('wheel', (e) => {
  if (!S.ids) return;
  e.preventDefault();
  if (S.tool === 'wand' && S.wandAt && !e.ctrlKey) {  // the wheel sets the wand's threshold
    S.wandThr = Math.min(1, Math.max(0.05, +(S.wandThr + (e.deltaY < 0 ? 0.02 : -0.02)).toFixed(2)));
    syncControls(); wandAt(...S.wandAt); return;
  }
  const [sx, sy] = screenPoint(e);
  zoomAt(sx, sy, Math.pow(1.2, -Math.sign(e.deltaY)));
  requestRender();
}, {passive: false});

// ------------------------------------------------------------------------------------------ toolbar
element.querySelectorAll('[data-tool]').forEach((b) => b.addEventListener('click', () => setTool(b.dataset.tool)));
element.querySelector('[data-act=fit]').addEventListener('click', () => { fit(); requestRender(); });
element.querySelector('[data-act=one]').addEventListener('click', () => { oneToOne(); requestRender(); });
element.querySelector('[data-act=help]').addEventListener('click', () => { help.hidden = !help.hidden; });
$('#opacity').addEventListener('input', (e) => { S.opacity = +e.target.value; renderNow(); });
$('#outline').addEventListener('change', (e) => { S.outline = e.target.checked; renderNow(); });
$('#labels').addEventListener('change', (e) => { S.labels = e.target.checked; renderNow(); });
$('#uncertainty').addEventListener('change', (e) => toggleUncertainty(e.target.checked));
$('#gt').addEventListener('change', (e) => toggleGt(e.target.checked));
$('#brush').addEventListener('input', (e) => { S.brush = +e.target.value; syncControls(); drawUi(); });
$('#wand-threshold').addEventListener('input', (e) => {
  S.wandThr = +e.target.value; syncControls(); if (S.wandAt) wandAt(...S.wandAt);
});

function toggleUncertainty(on) {
  if (on && !S.uncMap) { send('view', {uncertainty: true}); return; }  // sent once per image
  S.unc = on; syncControls(); requestRender();
  send('view', {uncertainty: on});
}
function toggleGt(on) {
  S.gt = on;
  if (on && !S.gtData) send('view', {ground_truth: true});
  syncControls(); requestRender();
}

// ------------------------------------------------------------------------------------------ keyboard
function typing(e) {
  const t = e.target;
  if (!t || !t.tagName) return false;
  if (t.isContentEditable) return true;
  if (t.tagName === 'TEXTAREA' || t.tagName === 'SELECT') return true;
  return t.tagName === 'INPUT' && !['checkbox', 'radio', 'range', 'button'].includes(t.type);
}
document.addEventListener('keydown', (e) => {
  if (typing(e) || !root.isConnected) return;
  if (e.target && e.target.type === 'range' && e.key.startsWith('Arrow')) return;  // a focused slider moves
  const k = e.key, ctrl = e.ctrlKey || e.metaKey;
  let handled = true;
  if (ctrl && (k === 'z' || k === 'Z')) action(e.shiftKey ? 'redo' : 'undo');
  else if (ctrl && (k === 'y' || k === 'Y')) action('redo');
  else if (ctrl && (k === 's' || k === 'S')) pageButton('export');
  else if (ctrl || e.altKey) handled = false;
  else if (k === '1' || k === '2' || k === '3') setTask(TASKS[+k - 1]);
  else if (k === 's' || k === 'S') setTool('select');
  else if (k === 'b' || k === 'B') setTool('brush');
  else if (k === 'e' || k === 'E') setTool('eraser');
  else if (k === 'p' || k === 'P') setTool('polygon');
  else if (k === 'w' || k === 'W') setTool('wand');
  else if (k === 'r' || k === 'R') setTool('recover');
  else if (k === 'Delete' || (k === 'Backspace' && !S.poly.length)) action('delete');
  else if (k === 'Backspace') { S.poly.pop(); drawUi(); }
  else if (k === 'm' || k === 'M') action('merge');
  else if (k === 'x' || k === 'X') action('split');
  else if (k === 'h' || k === 'H') action('fill_holes');
  else if (k === '[') { S.brush = Math.max(1, Math.round(S.brush / 1.25)); syncControls(); drawUi(); }
  else if (k === ']') { S.brush = Math.min(400, Math.round(S.brush * 1.25) + 1); syncControls(); drawUi(); }
  else if (k === 'o' || k === 'O') { S.outline = !S.outline; syncControls(); renderNow(); }
  else if (k === 'l' || k === 'L') { S.labels = !S.labels; syncControls(); renderNow(); }
  else if (k === 'u' || k === 'U') toggleUncertainty(!S.unc);
  else if (k === 'g' || k === 'G') { if (S.hasGt) toggleGt(!S.gt); }
  else if (k === 'a' || k === 'A' || k === 'ArrowLeft') pageButton('prev');
  else if (k === 'd' || k === 'D' || k === 'ArrowRight') pageButton('next');
  else if (k === 'f' || k === 'F') { fit(); requestRender(); }
  else if (k === '0') { oneToOne(); requestRender(); }
  else if (k === '?') help.hidden = !help.hidden;
  else if (k === ' ') S.space = true;
  else if (k === 'Enter') {
    if (S.tool === 'polygon' && S.poly.length) finishPolygon();
    else if (S.wand) { send('wand_commit', {mode: e.shiftKey ? 'add' : 'new', ids: S.selected,
      overwrite: $('#overwrite').checked}); }
    else handled = false;
  } else if (k === 'Escape') {
    if (S.poly.length) S.poly = [];
    else if (S.wand || S.cands.length) { S.wand = null; S.wandAt = null; S.cands = []; renderCandidates(); }
    else if (!help.hidden) help.hidden = true;
    else { S.selected = []; sendSelection(); }
    requestRender();
  } else handled = false;
  if (handled) { e.preventDefault(); e.stopPropagation(); }
}, true);
document.addEventListener('keyup', (e) => { if (e.key === ' ') S.space = false; });

new ResizeObserver(() => requestRender()).observe(stage);
syncControls();
if (props.value) { const p = props.value; queue = queue.then(() => apply(p)); }
requestRender();
