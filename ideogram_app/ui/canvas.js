// LayoutCanvas front end (runs once per component as gr.HTML `js_on_load`).
// Python owns the caption: every gesture ends in ONE `trigger('edit', {op, ...})` that
// editor.apply_canvas_op applies, and the value that comes back is what stays on screen. So that
// nobody waits for that round trip, each gesture is also applied here first, to a local copy of
// the elements, the way Python applies it; the server's value replaces the copy once no edit of
// ours is pending (a refused edit thereby disappears again).
// Geometry is in model units (0-1000 per axis): boxes are placed in percent (a unit is 0.1 %),
// pointer positions become units, snapping works in units, and rectangles are sent as
// [x0, y0, x1, y1] with size [1000, 1000], so the caption core's pixels_to_bbox gives exactly the
// integers snapped to (an edge snapped onto a neighbour's edge has the neighbour's coordinate).
// View-only state, never in the caption: the multi-selection, hidden and locked elements (by index;
// kept in step with the canvas's own reorders, deletes and duplicates).
// User text is only ever written with textContent.
//
// Operations sent: select {index|null}; draw {kind, rect, size}; move / resize {index, rect, size};
// boxes {boxes: [{index, rect}], size} (group move, align, distribute); nudge {index, dx, dy};
// duplicate {index, dx, dy}; delete, forward, backward {index}; delete_many {indices};
// reorder {index, to}; undo; redo.

const stage = element.querySelector('.lc-stage');
const boxes = element.querySelector('.lc-boxes');
const ghost = element.querySelector('.lc-ghost');
const marquee = element.querySelector('.lc-marquee');
const guides = element.querySelector('.lc-guides');
const readout = element.querySelector('.lc-readout');
const bg = element.querySelector('.lc-bg');
const unplaced = element.querySelector('.lc-unplaced');
const layerList = element.querySelector('.lc-layer-list');
const hint = element.querySelector('.lc-hint');
const HANDLES = ['nw', 'n', 'ne', 'e', 'se', 's', 'sw', 'w'];
const UNITS = 1000;
const SIZE = [UNITS, UNITS];
const GRID_STEP = 25; // the minor lines of the stage's grid (canvas.css draws them every 2.5 %)
const SNAP_PX = 6; // how close (screen pixels) an edge must come to a target to snap onto it
const MIN_DRAW_PX = 6;
const SMALL_PX = 34; // below this a side shows no middle handles (they would collide with the corners)
let tool = 'obj'; // 'obj' | 'text' draw that kind; 'select' makes drags on empty space a marquee
let drawKind = 'obj';
let model = { elements: [], selected: null };
let picked = new Set(); // the multi-selection; holds model.selected whenever that is set
let hidden = new Set();
let locked = new Set();
let drag = null;
let layerDrag = null;

// ---- the local copy ---------------------------------------------------------------------------

function adopt() {
  const v = props.value || {};
  const elements = Array.isArray(v.elements) ? v.elements : [];
  const n = elements.length;
  const selected = Number.isInteger(v.selected) && v.selected >= 0 && v.selected < n ? v.selected : null;
  model = { elements: elements.map((el) => ({ ...el, bbox: validBox(el.bbox) ? el.bbox.slice() : null })), selected };
  const keep = (set) => new Set([...set].filter((i) => i < n));
  hidden = keep(hidden);
  locked = keep(locked);
  picked = keep(picked);
  for (const i of hidden) picked.delete(i);
  if (selected === null) picked.clear();
  else if (!picked.has(selected)) picked = new Set([selected]);
}

function validBox(b) {
  return Array.isArray(b) && b.length === 4 && b.every((x) => typeof x === 'number');
}

function view() {
  const v = props.value || {};
  return {
    aspect: typeof v.aspect === 'number' && v.aspect > 0 ? v.aspect : 1,
    background: typeof v.background === 'string' ? v.background : null,
    opacity: typeof v.opacity === 'number' ? v.opacity : 0.5,
    stageHeight: typeof props.stage_height === 'string' ? props.stage_height : '68vh', // checked in canvas.py
  };
}

// New element order: order[newPosition] = old index, or null for a new element. The view-only sets
// follow their elements.
function reindex(order) {
  const moved = (set) => new Set(order.flatMap((old, pos) => (old !== null && set.has(old) ? [pos] : [])));
  hidden = moved(hidden);
  locked = moved(locked);
  picked = moved(picked);
}

function shiftIntoGrid(b, dy, dx) {
  const [y0, x0, y1, x1] = b;
  dy = Math.min(Math.max(dy, -y0), UNITS - y1);
  dx = Math.min(Math.max(dx, -x0), UNITS - x1);
  return [y0 + dy, x0 + dx, y1 + dy, x1 + dx];
}

function boxOfRect(r) {
  return [Math.min(r[1], r[3]), Math.min(r[0], r[2]), Math.max(r[1], r[3]), Math.max(r[0], r[2])];
}

function rectOfBox(b) {
  return [b[1], b[0], b[3], b[2]];
}

// The same effect as editor.apply_canvas_op, on the local copy (undo/redo wait for the server).
function applyLocal(p) {
  const els = model.elements;
  const n = els.length;
  if (p.op === 'select') {
    model.selected = p.index;
  } else if (p.op === 'draw') {
    els.push({ type: p.kind, bbox: boxOfRect(p.rect), text: '', desc: '', issue: '' });
    model.selected = n;
    picked = new Set([n]);
  } else if (p.op === 'move') {
    const old = els[p.index].bbox;
    const b = boxOfRect(p.rect);
    els[p.index] = { ...els[p.index], bbox: old ? shiftIntoGrid(old, b[0] - old[0], b[1] - old[1]) : b };
    model.selected = p.index;
  } else if (p.op === 'resize') {
    els[p.index] = { ...els[p.index], bbox: boxOfRect(p.rect) };
    model.selected = p.index;
  } else if (p.op === 'boxes') {
    for (const item of p.boxes) els[item.index] = { ...els[item.index], bbox: boxOfRect(item.rect) };
  } else if (p.op === 'nudge') {
    const b = els[p.index].bbox;
    if (b) els[p.index] = { ...els[p.index], bbox: shiftIntoGrid(b, p.dy, p.dx) };
    model.selected = p.index;
  } else if (p.op === 'delete') {
    const order = [...els.keys()].filter((i) => i !== p.index);
    model.elements = order.map((i) => els[i]);
    reindex(order);
    model.selected = model.elements.length ? Math.min(p.index, model.elements.length - 1) : null;
  } else if (p.op === 'delete_many') {
    const order = [...els.keys()].filter((i) => !p.indices.includes(i));
    model.elements = order.map((i) => els[i]);
    reindex(order);
    model.selected = null;
  } else if (p.op === 'duplicate') {
    const twin = { ...els[p.index], bbox: els[p.index].bbox ? shiftIntoGrid(els[p.index].bbox, p.dy, p.dx) : null };
    const order = [...els.keys()];
    order.splice(p.index + 1, 0, null);
    model.elements = order.map((i) => (i === null ? twin : els[i]));
    reindex(order);
    model.selected = p.index + 1;
  } else if (p.op === 'forward' || p.op === 'backward' || p.op === 'reorder') {
    const to = p.op === 'reorder' ? p.to : p.index + (p.op === 'forward' ? 1 : -1);
    if (to >= 0 && to < n) {
      const order = [...els.keys()];
      order.splice(to, 0, order.splice(p.index, 1)[0]);
      model.elements = order.map((i) => els[i]);
      reindex(order);
      model.selected = to;
    } else {
      model.selected = p.index;
    }
  }
  if (model.selected === null) picked.clear();
  else if (!picked.has(model.selected)) picked = new Set([model.selected]);
}

// ---- talking to the server --------------------------------------------------------------------
// One operation in flight at a time: each is applied to the session's state as the server holds
// it, so later ones wait (consecutive nudges, and group moves of the same boxes, are merged) until
// the new value comes back. An edit that changes nothing sends no value, so a timer lets the next
// one go anyway; the page keeps its own copy on screen until a value comes (a slow server must not
// make a box jump back), and takes the server's caption again after RESYNC_AFTER_MS without one
// (an edit the server refused).
const RELEASE_AFTER_MS = 1500;
const RESYNC_AFTER_MS = 10000;
let inFlight = false;
let unanswered = false; // an edit was sent and no value has come since
let waiting = [];
let releaseTimer = null;
let resyncTimer = null;

function sameIndices(a, b) {
  return a.length === b.length && a.every((item, k) => item.index === b[k].index);
}

function send(payload) {
  applyLocal(payload);
  render();
  if (!inFlight) {
    dispatch(payload);
    return;
  }
  const last = waiting[waiting.length - 1];
  if (last && last.op === 'nudge' && payload.op === 'nudge' && last.index === payload.index) {
    last.dx += payload.dx;
    last.dy += payload.dy;
  } else if (last && last.op === 'boxes' && payload.op === 'boxes' && sameIndices(last.boxes, payload.boxes)) {
    last.boxes = payload.boxes;
  } else {
    waiting.push(payload);
  }
}

function dispatch(payload) {
  inFlight = true;
  unanswered = true;
  clearTimeout(releaseTimer);
  releaseTimer = setTimeout(release, RELEASE_AFTER_MS);
  clearTimeout(resyncTimer);
  resyncTimer = setTimeout(resync, RESYNC_AFTER_MS);
  trigger('edit', payload);
}

function release() {
  inFlight = false;
  clearTimeout(releaseTimer);
  const next = waiting.shift();
  if (next) dispatch(next);
}

// Show the server's value, unless an edit is still on its way or a gesture is under way.
function adoptIfIdle() {
  if (inFlight || unanswered || waiting.length || drag || layerDrag) return;
  adopt();
  render();
}

function resync() {
  unanswered = false;
  adoptIfIdle();
}

// A new value: the answer to the edit in flight, or an edit made elsewhere (JSON, inspector, undo).
function received() {
  unanswered = false;
  release();
  adoptIfIdle();
}

// ---- drawing ----------------------------------------------------------------------------------

// The caption's type is user text: only the two known kinds become a class (a type such as
// "obj lc-selected" must not add classes of its own).
function kindClass(el) {
  return el.type === 'text' ? 'lc-text' : 'lc-obj';
}

// A colour per element, fixed by its position in the list (golden-angle hues stay apart).
function colorOf(index) {
  return 'hsl(' + ((index * 137.508 + 215) % 360).toFixed(1) + ' 72% 40%)';
}

function labelOf(el, index) {
  const body = el.type === 'text' && el.text ? '“' + el.text + '”' : (el.desc || '');
  const short = body.length > 60 ? body.slice(0, 57) + '…' : body;
  return (index + 1) + ' · ' + el.type + (short ? ' · ' + short : '');
}

function fileUrl(path) {
  if (/^(https?:|data:|blob:)/.test(path)) return path;
  const root = (window.gradio_config && window.gradio_config.root) || '';
  return root.replace(/\/$/, '') + '/gradio_api/file=' + path;
}

function place(node, b) {
  node.style.left = b[1] / 10 + '%';
  node.style.top = b[0] / 10 + '%';
  node.style.width = (b[3] - b[1]) / 10 + '%';
  node.style.height = (b[2] - b[0]) / 10 + '%';
}

function node(tag, className, text) {
  const n = document.createElement(tag);
  n.className = className;
  if (text !== undefined) n.textContent = text;
  return n;
}

function render() {
  const v = view();
  stage.style.aspectRatio = String(v.aspect);
  stage.style.width = 'min(100%, calc(' + v.stageHeight + ' * ' + v.aspect + '))';
  if (v.background) {
    const url = fileUrl(v.background);
    if (bg.getAttribute('src') !== url) bg.setAttribute('src', url);
    bg.style.display = 'block';
    bg.style.opacity = String(v.opacity);
  } else {
    bg.removeAttribute('src');
    bg.style.display = 'none';
  }
  const r = stage.getBoundingClientRect();
  const single = picked.size === 1;
  boxes.replaceChildren();
  unplaced.replaceChildren();
  model.elements.forEach((el, i) => {
    const classes = [kindClass(el)];
    if (i === model.selected) classes.push('lc-selected');
    if (picked.has(i)) classes.push('lc-picked');
    if (locked.has(i)) classes.push('lc-locked');
    if (!el.bbox) {
      const chip = node('button', 'lc-chip ' + classes.join(' '), labelOf(el, i) + ' (no box)');
      chip.type = 'button';
      chip.dataset.index = String(i);
      chip.style.setProperty('--lc-color', colorOf(i));
      unplaced.appendChild(chip);
      return;
    }
    if (hidden.has(i)) return;
    const [y0, x0, y1, x1] = el.bbox;
    if (((x1 - x0) * r.width) / UNITS < SMALL_PX) classes.push('lc-narrow');
    if (((y1 - y0) * r.height) / UNITS < SMALL_PX) classes.push('lc-short');
    if (el.issue) classes.push('lc-flagged');
    const box = node('div', 'lc-box ' + classes.join(' '));
    box.dataset.index = String(i);
    box.style.setProperty('--lc-color', colorOf(i));
    place(box, el.bbox);
    box.title = 'bbox [y_min, x_min, y_max, x_max] = [' + el.bbox.join(', ') + ']' + (el.issue ? '\n' + el.issue : '');
    box.appendChild(node('span', 'lc-label', (locked.has(i) ? '(locked) ' : '') + (el.issue ? '⚠ ' : '') + labelOf(el, i)));
    if (i === model.selected && single && !locked.has(i)) {
      for (const h of HANDLES) {
        const handle = node('div', 'lc-handle lc-h-' + h);
        handle.dataset.handle = h;
        box.appendChild(handle);
      }
    }
    boxes.appendChild(box);
  });
  renderLayers();
  element.querySelectorAll('.lc-type').forEach((b) => b.classList.toggle('lc-active', b.dataset.type === tool));
  element.querySelectorAll('[data-align]').forEach((b) => { b.disabled = picked.size < 2; });
  element.querySelectorAll('[data-distribute]').forEach((b) => { b.disabled = picked.size < 3; });
  hint.textContent = model.elements.length
    ? 'Drag on empty space to draw · Shift-drag draws inside a box · drag a box to move, handles resize (snaps to ' +
      'the grid and to other boxes; hold Alt for free placement) · Shift/Ctrl-click or marquee (Ctrl-drag, or the ' +
      'select tool) for several · Del deletes · Ctrl+D duplicates · [ ] reorder · arrows nudge · Ctrl+Z / Ctrl+Y'
    : 'Drag on the canvas to draw your first box.';
}

function renderLayers() {
  layerList.replaceChildren();
  model.elements.forEach((el, i) => {
    const row = node('li', 'lc-layer ' + kindClass(el));
    row.classList.toggle('lc-picked', picked.has(i));
    row.classList.toggle('lc-selected', i === model.selected);
    row.classList.toggle('lc-hidden', hidden.has(i));
    row.classList.toggle('lc-locked', locked.has(i));
    row.dataset.index = String(i);
    row.style.setProperty('--lc-color', colorOf(i));
    row.title = 'Click to select (Shift/Ctrl: add), drag to reorder';
    row.appendChild(node('span', 'lc-grip', '⠿'));
    row.appendChild(node('span', 'lc-swatch', el.type === 'text' ? 'T' : ''));
    row.appendChild(node('span', 'lc-layer-name', labelOf(el, i) + (el.bbox ? '' : ' (no box)')));
    const eye = node('button', 'lc-layer-btn', hidden.has(i) ? 'show' : 'hide');
    eye.type = 'button';
    eye.dataset.layer = 'hide';
    eye.title = hidden.has(i) ? 'Show on the canvas' : 'Hide on the canvas (stays in the caption)';
    eye.setAttribute('aria-pressed', String(hidden.has(i)));
    const lock = node('button', 'lc-layer-btn', locked.has(i) ? 'unlock' : 'lock');
    lock.type = 'button';
    lock.dataset.layer = 'lock';
    lock.title = locked.has(i) ? 'Unlock' : 'Lock (no moving or resizing)';
    lock.setAttribute('aria-pressed', String(locked.has(i)));
    row.append(eye, lock);
    layerList.appendChild(row);
  });
}

// ---- snapping ---------------------------------------------------------------------------------

function stageRect() {
  return stage.getBoundingClientRect();
}

function unitPoint(event) {
  const r = stageRect();
  return {
    x: (Math.min(Math.max(event.clientX - r.left, 0), r.width) * UNITS) / r.width,
    y: (Math.min(Math.max(event.clientY - r.top, 0), r.height) * UNITS) / r.height,
  };
}

function tolerance() {
  const r = stageRect();
  return { x: (SNAP_PX * UNITS) / r.width, y: (SNAP_PX * UNITS) / r.height };
}

// Lines to snap onto, per axis: the frame's edges and centre, and every other visible box's
// edges and centre.
function targets(exclude) {
  const xs = [0, UNITS / 2, UNITS];
  const ys = [0, UNITS / 2, UNITS];
  model.elements.forEach((el, i) => {
    if (exclude.has(i) || hidden.has(i) || !el.bbox) return;
    const [y0, x0, y1, x1] = el.bbox;
    xs.push(x0, x1, (x0 + x1) / 2);
    ys.push(y0, y1, (y0 + y1) / 2);
  });
  return { xs, ys };
}

// The smallest shift that puts one of `values` on a target line (boxes first, then the grid),
// within `tol` units: {delta, at, grid} or null.
function snapAxis(values, lines, tol) {
  let best = null;
  for (const v of values) {
    for (const t of lines) {
      if (Math.abs(t - v) <= tol && (!best || Math.abs(t - v) < Math.abs(best.delta))) best = { delta: t - v, at: t, grid: false };
    }
  }
  if (best) return best;
  for (const v of values) {
    const t = Math.round(v / GRID_STEP) * GRID_STEP;
    if (Math.abs(t - v) <= tol && (!best || Math.abs(t - v) < Math.abs(best.delta))) best = { delta: t - v, at: t, grid: true };
  }
  return best;
}

function showGuides(list) {
  guides.replaceChildren();
  for (const g of list) {
    if (!g) continue;
    const line = node('div', 'lc-guide lc-guide-' + g.axis + (g.grid ? ' lc-guide-grid' : ''));
    if (g.axis === 'x') line.style.left = g.at / 10 + '%';
    else line.style.top = g.at / 10 + '%';
    guides.appendChild(line);
  }
}

// The box being drawn, moved or resized, as the caption will store it.
function showReadout(b) {
  if (!b) {
    readout.style.display = 'none';
    return;
  }
  readout.textContent = '[' + b.join(', ') + ']';
  readout.style.display = 'block';
  readout.style.left = Math.min(b[1], 800) / 10 + '%';
  readout.style.top = b[2] <= 940 ? b[2] / 10 + '%' : '';
  readout.style.bottom = b[2] > 940 ? (UNITS - b[0]) / 10 + '%' : '';
}

function round(v) {
  return Math.floor(v + 0.5); // half up, as the caption core rounds
}

// A point (draw), snapped unless `free`.
function snapPoint(p, free) {
  if (free) {
    showGuides([]);
    return { x: round(p.x), y: round(p.y) };
  }
  const t = targets(new Set());
  const tol = tolerance();
  const sx = snapAxis([p.x], t.xs, tol.x);
  const sy = snapAxis([p.y], t.ys, tol.y);
  showGuides([sx && { axis: 'x', ...sx }, sy && { axis: 'y', ...sy }]);
  return { x: round(sx ? sx.at : p.x), y: round(sy ? sy.at : p.y) };
}

// ---- gestures on the stage --------------------------------------------------------------------

function boxAt(event) {
  const box = event.target.closest('.lc-box');
  return box ? Number(box.dataset.index) : null;
}

function startMove(index, p) {
  const group = picked.has(index) && picked.size > 1 ? [...picked] : [index];
  const members = group.filter((i) => !locked.has(i) && !hidden.has(i) && model.elements[i] && model.elements[i].bbox);
  return {
    mode: 'move', index, start: p, moved: false, members,
    from: members.map((i) => model.elements[i].bbox.slice()),
    nodes: members.map((i) => boxes.querySelector('.lc-box[data-index="' + i + '"]')),
  };
}

stage.addEventListener('pointerdown', (event) => {
  if (event.button !== undefined && event.button !== 0) return;
  stage.focus({ preventScroll: true });
  const p = unitPoint(event);
  const handle = event.target.closest('.lc-handle');
  const index = boxAt(event);
  const additive = event.ctrlKey || event.metaKey;
  if (handle && index !== null) {
    drag = { mode: 'resize', index, handle: handle.dataset.handle, start: p, from: model.elements[index].bbox.slice(),
             node: event.target.closest('.lc-box') };
  } else if (event.shiftKey || (index === null && tool !== 'select' && !additive)) {
    const s = snapPoint(p, event.altKey);
    drag = { mode: 'draw', start: s, under: index, shift: event.shiftKey };
    ghost.className = 'lc-ghost lc-' + drawKind;
    place(ghost, [s.y, s.x, s.y, s.x]);
    ghost.style.display = 'block';
  } else if (additive || index === null) {
    drag = { mode: 'marquee', start: p, under: index, additive };
  } else {
    drag = startMove(index, p);
  }
  stage.setPointerCapture(event.pointerId);
  event.preventDefault();
});

function moveGroup(d, p, free) {
  const tol = tolerance();
  const ys0 = Math.min(...d.from.map((b) => b[0]));
  const xs0 = Math.min(...d.from.map((b) => b[1]));
  const ys1 = Math.max(...d.from.map((b) => b[2]));
  const xs1 = Math.max(...d.from.map((b) => b[3]));
  let dx = Math.min(Math.max(p.x - d.start.x, -xs0), UNITS - xs1);
  let dy = Math.min(Math.max(p.y - d.start.y, -ys0), UNITS - ys1);
  let sx = null;
  let sy = null;
  if (!free) {
    const t = targets(new Set(d.members));
    sx = snapAxis([xs0 + dx, (xs0 + xs1) / 2 + dx, xs1 + dx], t.xs, tol.x);
    sy = snapAxis([ys0 + dy, (ys0 + ys1) / 2 + dy, ys1 + dy], t.ys, tol.y);
    if (sx) dx += sx.delta;
    if (sy) dy += sy.delta;
  }
  dx = Math.min(Math.max(round(dx), -xs0), UNITS - xs1);
  dy = Math.min(Math.max(round(dy), -ys0), UNITS - ys1);
  showGuides([sx && { axis: 'x', ...sx }, sy && { axis: 'y', ...sy }]);
  return d.from.map((b) => [b[0] + dy, b[1] + dx, b[2] + dy, b[3] + dx]);
}

function resizeBox(d, p, free) {
  const tol = tolerance();
  const t = targets(new Set([d.index]));
  let [y0, x0, y1, x1] = d.from;
  const h = d.handle;
  const found = [];
  const edge = (value, lines, tolAxis, axis) => {
    const s = free ? null : snapAxis([value], lines, tolAxis);
    if (s) found.push({ axis, ...s });
    return round(s ? s.at : value);
  };
  if (h.includes('w')) x0 = Math.min(Math.max(edge(x0 + p.x - d.start.x, t.xs, tol.x, 'x'), 0), x1 - 1);
  if (h.includes('e')) x1 = Math.max(Math.min(edge(x1 + p.x - d.start.x, t.xs, tol.x, 'x'), UNITS), x0 + 1);
  if (h.includes('n')) y0 = Math.min(Math.max(edge(y0 + p.y - d.start.y, t.ys, tol.y, 'y'), 0), y1 - 1);
  if (h.includes('s')) y1 = Math.max(Math.min(edge(y1 + p.y - d.start.y, t.ys, tol.y, 'y'), UNITS), y0 + 1);
  showGuides(found);
  return [y0, x0, y1, x1];
}

function rubber(d, p) {
  return [Math.min(d.start.y, p.y), Math.min(d.start.x, p.x), Math.max(d.start.y, p.y), Math.max(d.start.x, p.x)];
}

function bigEnough(b) {
  const r = stageRect();
  return ((b[3] - b[1]) * r.width) / UNITS >= MIN_DRAW_PX && ((b[2] - b[0]) * r.height) / UNITS >= MIN_DRAW_PX;
}

stage.addEventListener('pointermove', (event) => {
  if (!drag) return;
  const d = drag;
  const p = unitPoint(event);
  if (d.mode === 'draw') {
    d.current = rubber(d, snapPoint(p, event.altKey));
    place(ghost, d.current);
    showReadout(d.current);
  } else if (d.mode === 'marquee') {
    d.current = rubber(d, p);
    if (bigEnough(d.current)) {
      marquee.style.display = 'block';
      place(marquee, d.current);
    }
  } else if (d.mode === 'move') {
    const r = stageRect();
    if (Math.abs(((p.x - d.start.x) * r.width) / UNITS) + Math.abs(((p.y - d.start.y) * r.height) / UNITS) > 2) d.moved = true;
    if (!d.moved || !d.members.length) return;
    d.current = moveGroup(d, p, event.altKey);
    d.current.forEach((b, k) => d.nodes[k] && place(d.nodes[k], b));
    showReadout(d.current[d.members.indexOf(d.index)] || d.current[0]);
  } else if (d.mode === 'resize') {
    d.current = resizeBox(d, p, event.altKey);
    place(d.node, d.current);
    showReadout(d.current);
  }
});

function selectOnly(index) {
  picked = index === null ? new Set() : new Set([index]);
  if (model.selected !== index) send({ op: 'select', index });
  else render();
}

// Add `index` to the multi-selection or take it out; the server's selection (the inspector's
// element) follows the last element added.
function toggle(index) {
  if (picked.has(index)) {
    picked.delete(index);
    if (model.selected === index) {
      const rest = [...picked];
      send({ op: 'select', index: rest.length ? rest[rest.length - 1] : null });
      return;
    }
    render();
  } else {
    picked.add(index);
    if (model.selected !== index) send({ op: 'select', index });
    else render();
  }
}

function pickMany(indices, additive) {
  const chosen = additive ? new Set([...picked, ...indices]) : new Set(indices);
  if (!chosen.size) {
    selectOnly(null);
    return;
  }
  picked = chosen;
  const primary = chosen.has(model.selected) ? model.selected : [...chosen][0];
  picked.add(primary);
  if (model.selected !== primary) send({ op: 'select', index: primary });
  else render();
}

function finish(event) {
  if (!drag) return;
  const d = drag;
  drag = null;
  showGuides([]);
  showReadout(null);
  ghost.style.display = 'none';
  marquee.style.display = 'none';
  if (d.mode === 'draw') {
    if (d.current && bigEnough(d.current)) {
      send({ op: 'draw', kind: drawKind, rect: rectOfBox(d.current), size: SIZE });
    } else if (d.shift && d.under !== null) {
      toggle(d.under);
    } else if (!d.shift && model.selected !== null) {
      selectOnly(null);
    } else {
      render();
    }
  } else if (d.mode === 'marquee') {
    if (d.current && bigEnough(d.current)) {
      const [my0, mx0, my1, mx1] = d.current;
      const inside = [];
      model.elements.forEach((el, i) => {
        if (!el.bbox || hidden.has(i) || locked.has(i)) return;
        const [y0, x0, y1, x1] = el.bbox;
        if (x0 < mx1 && x1 > mx0 && y0 < my1 && y1 > my0) inside.push(i);
      });
      pickMany(inside, d.additive);
    } else if (d.under !== null) {
      toggle(d.under);
    } else if (!d.additive) {
      selectOnly(null);
    }
  } else if (d.mode === 'move') {
    if (d.moved && d.current && d.current.every((b, k) => b.every((v, j) => v === d.from[k][j]))) {
      d.current = null; // dragged back to where it was: nothing to send
      if (model.selected !== d.index) selectOnly(d.index);
      else render();
    } else if (d.moved && d.current) {
      if (d.members.length === 1 && d.members[0] === d.index) {
        send({ op: 'move', index: d.index, rect: rectOfBox(d.current[0]), size: SIZE });
      } else {
        const changed = d.members.map((index, k) => ({ index, rect: rectOfBox(d.current[k]) }));
        send({ op: 'boxes', boxes: changed, size: SIZE });
      }
    } else if (!d.moved) {
      selectOnly(d.index);
    } else {
      render();
    }
  } else if (d.mode === 'resize') {
    if (d.current && d.current.some((v, k) => v !== d.from[k])) {
      send({ op: 'resize', index: d.index, rect: rectOfBox(d.current), size: SIZE });
    } else {
      render();
    }
  }
  adoptIfIdle(); // a gesture without an edit: a value that arrived during it is shown now
}

// A gesture that ended without an edit: show a value that arrived meanwhile.
function settle() {
  adoptIfIdle();
  render();
}

stage.addEventListener('pointerup', finish);
stage.addEventListener('pointercancel', () => {
  drag = null;
  showGuides([]);
  showReadout(null);
  ghost.style.display = 'none';
  marquee.style.display = 'none';
  settle();
});

// ---- commands: keyboard and toolbar -----------------------------------------------------------

// Boxes of the multi-selection that may move (visible, unlocked, with a box).
function movable() {
  return [...picked].filter((i) => !locked.has(i) && !hidden.has(i) && model.elements[i] && model.elements[i].bbox);
}

function sendBoxes(changes) {
  const real = changes.filter(({ index, bbox }) => bbox.some((v, k) => v !== model.elements[index].bbox[k]));
  if (real.length) send({ op: 'boxes', boxes: real.map(({ index, bbox }) => ({ index, rect: rectOfBox(bbox) })), size: SIZE });
}

function nudgeGroup(dx, dy) {
  const members = movable();
  const from = members.map((i) => model.elements[i].bbox);
  dx = Math.min(Math.max(dx, -Math.min(...from.map((b) => b[1]))), UNITS - Math.max(...from.map((b) => b[3])));
  dy = Math.min(Math.max(dy, -Math.min(...from.map((b) => b[0]))), UNITS - Math.max(...from.map((b) => b[2])));
  sendBoxes(members.map((index, k) => ({ index, bbox: [from[k][0] + dy, from[k][1] + dx, from[k][2] + dy, from[k][3] + dx] })));
}

// Align the selected boxes on the selection's left/right/top/bottom edge or its centre line.
// Locked boxes stay where they are but count for the edge.
function align(how) {
  const members = [...picked].filter((i) => model.elements[i] && model.elements[i].bbox && !hidden.has(i));
  if (members.length < 2) return;
  const bs = members.map((i) => model.elements[i].bbox);
  const lo = (k) => Math.min(...bs.map((b) => b[k]));
  const hi = (k) => Math.max(...bs.map((b) => b[k]));
  const changes = [];
  members.forEach((index, k) => {
    if (locked.has(index)) return;
    const [y0, x0, y1, x1] = bs[k];
    let dx = 0;
    let dy = 0;
    if (how === 'left') dx = lo(1) - x0;
    else if (how === 'right') dx = hi(3) - x1;
    else if (how === 'hcenter') dx = round((lo(1) + hi(3)) / 2 - (x1 - x0) / 2) - x0;
    else if (how === 'top') dy = lo(0) - y0;
    else if (how === 'bottom') dy = hi(2) - y1;
    else if (how === 'vcenter') dy = round((lo(0) + hi(2)) / 2 - (y1 - y0) / 2) - y0;
    changes.push({ index, bbox: [y0 + dy, x0 + dx, y1 + dy, x1 + dx] });
  });
  sendBoxes(changes);
}

// Equal gaps between the selected boxes along one axis; the outermost two stay put.
function distribute(axis) {
  const members = [...picked].filter((i) => model.elements[i] && model.elements[i].bbox && !hidden.has(i));
  if (members.length < 3) return;
  const [a0, a1] = axis === 'h' ? [1, 3] : [0, 2];
  const items = members.map((index) => ({ index, b: model.elements[index].bbox }));
  items.sort((p, q) => p.b[a0] + p.b[a1] - (q.b[a0] + q.b[a1]));
  const first = items[0].b;
  const last = items[items.length - 1].b;
  const span = last[a1] - first[a0];
  const gap = (span - items.reduce((sum, it) => sum + it.b[a1] - it.b[a0], 0)) / (items.length - 1);
  let pos = first[a0];
  const changes = [];
  items.forEach((it, k) => {
    const size = it.b[a1] - it.b[a0];
    const start = k === items.length - 1 ? last[a0] : round(pos);
    pos += size + gap;
    if (locked.has(it.index) || k === 0) return;
    const b = it.b.slice();
    b[a0] = start;
    b[a1] = start + size;
    changes.push({ index: it.index, bbox: b });
  });
  sendBoxes(changes);
}

// Ctrl+D: the copy goes down (up near the bottom) by more than a label's height, so the two
// labels never overlap.
function duplicate(index) {
  const el = model.elements[index];
  const labelPx = (boxes.querySelector('.lc-box[data-index="' + index + '"] .lc-label') || {}).offsetHeight || 18;
  let dy = Math.ceil(((labelPx + 4) * UNITS) / stageRect().height);
  const dx = 10;
  if (el.bbox && el.bbox[2] + dy > UNITS && el.bbox[0] - dy >= 0) dy = -dy;
  send({ op: 'duplicate', index, dy, dx });
}

stage.addEventListener('keydown', (event) => {
  const ctrl = event.ctrlKey || event.metaKey;
  const key = event.key;
  const sel = model.selected;
  const arrows = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  let handled = true;
  if (ctrl && (key === 'z' || key === 'Z')) send({ op: event.shiftKey ? 'redo' : 'undo' });
  else if (ctrl && (key === 'y' || key === 'Y')) send({ op: 'redo' });
  else if (ctrl && (key === 'a' || key === 'A')) pickMany(model.elements.flatMap((el, i) => (el.bbox && !hidden.has(i) && !locked.has(i) ? [i] : [])), false);
  else if (arrows[key] && picked.size > 1) {
    const step = event.shiftKey ? 10 : 1;
    nudgeGroup(arrows[key][0] * step, arrows[key][1] * step);
  } else if (sel !== null && arrows[key]) {
    const step = event.shiftKey ? 10 : 1;
    if (!locked.has(sel)) send({ op: 'nudge', index: sel, dx: arrows[key][0] * step, dy: arrows[key][1] * step });
  } else if (picked.size > 1 && (key === 'Delete' || key === 'Backspace')) send({ op: 'delete_many', indices: [...picked] });
  else if (sel !== null && (key === 'Delete' || key === 'Backspace')) send({ op: 'delete', index: sel });
  else if (sel !== null && ctrl && (key === 'd' || key === 'D')) duplicate(sel);
  else if (sel !== null && key === ']') send({ op: 'forward', index: sel });
  else if (sel !== null && key === '[') send({ op: 'backward', index: sel });
  else if (key === 'Escape') selectOnly(null);
  else if (!ctrl && !event.altKey && (key === 'o' || key === 't' || key === 'v')) setTool({ o: 'obj', t: 'text', v: 'select' }[key]);
  else handled = false;
  if (handled) event.preventDefault();
});

function setTool(name) {
  tool = name;
  if (name !== 'select') drawKind = name;
  render();
}

element.addEventListener('click', (event) => {
  const chip = event.target.closest('.lc-chip');
  if (chip) {
    selectOnly(Number(chip.dataset.index));
    return;
  }
  const button = event.target.closest('[data-tool]');
  if (!button || button.disabled) return;
  stage.focus({ preventScroll: true }); // the keyboard shortcuts keep working after a toolbar click
  const op = button.dataset.tool;
  const sel = model.selected;
  if (op === 'type') setTool(button.dataset.type);
  else if (op === 'align') align(button.dataset.align);
  else if (op === 'distribute') distribute(button.dataset.distribute);
  else if (op === 'undo' || op === 'redo') send({ op });
  else if (op === 'delete' && picked.size > 1) send({ op: 'delete_many', indices: [...picked] });
  else if (sel !== null && op === 'duplicate') duplicate(sel);
  else if (sel !== null) send({ op, index: sel });
});

// ---- the layers list: select, drag to reorder, hide, lock -------------------------------------

function layerTarget(clientY) {
  const rows = [...layerList.children];
  const before = rows.filter((row) => {
    const r = row.getBoundingClientRect();
    return clientY > r.top + r.height / 2;
  }).length;
  return before; // insert before this position of the current list
}

layerList.addEventListener('pointerdown', (event) => {
  if (event.button !== undefined && event.button !== 0) return;
  const row = event.target.closest('.lc-layer');
  if (!row || event.target.closest('.lc-layer-btn')) return;
  stage.focus({ preventScroll: true }); // arrows and Delete act on what the list selects
  layerDrag = { from: Number(row.dataset.index), y: event.clientY, moved: false, additive: event.shiftKey || event.ctrlKey || event.metaKey };
  layerList.setPointerCapture(event.pointerId);
  event.preventDefault();
});

layerList.addEventListener('pointermove', (event) => {
  if (!layerDrag) return;
  if (Math.abs(event.clientY - layerDrag.y) > 4) layerDrag.moved = true;
  if (!layerDrag.moved) return;
  const at = layerTarget(event.clientY);
  [...layerList.children].forEach((row, k) => {
    row.classList.toggle('lc-drop-before', k === at);
    row.classList.toggle('lc-drop-after', at === layerList.children.length && k === at - 1);
  });
});

layerList.addEventListener('pointerup', (event) => {
  if (!layerDrag) return;
  const d = layerDrag;
  layerDrag = null;
  if (!d.moved) {
    if (d.additive) toggle(d.from);
    else selectOnly(d.from);
    return;
  }
  const at = layerTarget(event.clientY);
  const to = at > d.from ? at - 1 : at;
  if (to !== d.from) send({ op: 'reorder', index: d.from, to });
  else render();
  adoptIfIdle();
});

layerList.addEventListener('pointercancel', () => {
  layerDrag = null;
  settle();
});

layerList.addEventListener('click', (event) => {
  const button = event.target.closest('.lc-layer-btn');
  if (!button) return;
  const index = Number(button.closest('.lc-layer').dataset.index);
  const set = button.dataset.layer === 'hide' ? hidden : locked;
  if (set.has(index)) set.delete(index);
  else set.add(index);
  if (button.dataset.layer === 'hide' && hidden.has(index) && picked.has(index)) {
    picked.delete(index);
    if (model.selected === index) {
      const rest = [...picked];
      send({ op: 'select', index: rest.length ? rest[0] : null });
      return;
    }
  }
  render();
});

adopt();
render();
watch('value', received);
// Handles and labels depend on the boxes' size on screen.
new ResizeObserver(() => {
  if (!drag && !layerDrag) render();
}).observe(stage);
