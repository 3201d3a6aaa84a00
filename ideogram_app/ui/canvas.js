// LayoutCanvas front end (runs once per component as gr.HTML `js_on_load`).
// Python owns the truth: this code only draws `props.value` and reports gestures as
// `trigger('edit', {op, ...})`. Rectangles are sent in stage CSS pixels with the stage size, and
// Python converts them with the caption core's single pixel <-> 0-1000 function. Boxes are
// positioned in percent (a 0-1000 unit is 0.1 %), so drawing needs no conversion at all.
// User text is only ever written with textContent.

const stage = element.querySelector('.lc-stage');
const boxes = element.querySelector('.lc-boxes');
const ghost = element.querySelector('.lc-ghost');
const bg = element.querySelector('.lc-bg');
const unplaced = element.querySelector('.lc-unplaced');
const hint = element.querySelector('.lc-hint');
const HANDLES = ['nw', 'n', 'ne', 'e', 'se', 's', 'sw', 'w'];
const MIN_DRAW_PX = 6;
let drawType = 'obj';
let drag = null;

function current() {
  const v = props.value || {};
  return {
    elements: Array.isArray(v.elements) ? v.elements : [],
    selected: Number.isInteger(v.selected) ? v.selected : null,
    aspect: typeof v.aspect === 'number' && v.aspect > 0 ? v.aspect : 1,
    background: typeof v.background === 'string' ? v.background : null,
    opacity: typeof v.opacity === 'number' ? v.opacity : 0.5,
  };
}

// The caption's type is user text: only the two known kinds become a class (a type such as
// "obj lc-selected" must not add classes of its own).
function kindClass(el) {
  return el.type === 'text' ? 'lc-text' : 'lc-obj';
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

function render() {
  const v = current();
  stage.style.aspectRatio = String(v.aspect);
  stage.style.width = 'min(100%, calc(68vh * ' + v.aspect + '))';
  if (v.background) {
    const url = fileUrl(v.background);
    if (bg.getAttribute('src') !== url) bg.setAttribute('src', url);
    bg.style.display = 'block';
    bg.style.opacity = String(v.opacity);
  } else {
    bg.removeAttribute('src');
    bg.style.display = 'none';
  }
  boxes.replaceChildren();
  unplaced.replaceChildren();
  v.elements.forEach((el, i) => {
    const selected = i === v.selected;
    if (!Array.isArray(el.bbox) || el.bbox.length !== 4) {
      const chip = document.createElement('button');
      chip.type = 'button';
      chip.className = 'lc-chip ' + kindClass(el) + (selected ? ' lc-selected' : '');
      chip.dataset.index = String(i);
      chip.textContent = labelOf(el, i) + ' (no box)';
      unplaced.appendChild(chip);
      return;
    }
    const [y0, x0, y1, x1] = el.bbox;
    const box = document.createElement('div');
    box.className = 'lc-box ' + kindClass(el) + (selected ? ' lc-selected' : '') + (el.issue ? ' lc-flagged' : '');
    box.dataset.index = String(i);
    box.style.left = x0 / 10 + '%';
    box.style.top = y0 / 10 + '%';
    box.style.width = (x1 - x0) / 10 + '%';
    box.style.height = (y1 - y0) / 10 + '%';
    box.title = 'bbox [y_min, x_min, y_max, x_max] = [' + el.bbox.join(', ') + ']' + (el.issue ? '\n' + el.issue : '');
    const label = document.createElement('span');
    label.className = 'lc-label';
    label.textContent = labelOf(el, i);
    box.appendChild(label);
    if (selected) {
      for (const h of HANDLES) {
        const handle = document.createElement('div');
        handle.className = 'lc-handle lc-h-' + h;
        handle.dataset.handle = h;
        box.appendChild(handle);
      }
    }
    boxes.appendChild(box);
  });
  hint.textContent = v.elements.length
    ? 'Drag on empty space to add a box · drag a box to move · handles resize · Del deletes · Ctrl+D duplicates · [ ] reorder · Ctrl+Z / Ctrl+Y undo / redo · arrows nudge'
    : 'Drag on the canvas to draw your first box.';
  element.querySelectorAll('.lc-type').forEach((b) => b.classList.toggle('lc-active', b.dataset.type === drawType));
}

function stagePoint(event) {
  const r = stage.getBoundingClientRect();
  return {
    x: Math.min(Math.max(event.clientX - r.left, 0), r.width),
    y: Math.min(Math.max(event.clientY - r.top, 0), r.height),
    w: r.width,
    h: r.height,
  };
}

function rectOf(node) {
  const r = stage.getBoundingClientRect();
  const b = node.getBoundingClientRect();
  return [b.left - r.left, b.top - r.top, b.right - r.left, b.bottom - r.top];
}

// One operation in flight at a time: each event carries the session state as it was when it was
// sent, so a second operation sent before the first one's result arrives would start from stale
// state. Later operations wait (consecutive nudges are merged) until the new value comes back.
const RELEASE_AFTER_MS = 1500;
let inFlight = false;
let waiting = [];
let releaseTimer = null;

function send(payload) {
  if (inFlight) {
    const last = waiting[waiting.length - 1];
    if (last && last.op === 'nudge' && payload.op === 'nudge' && last.index === payload.index) {
      last.dx += payload.dx;
      last.dy += payload.dy;
    } else {
      waiting.push(payload);
    }
    return;
  }
  inFlight = true;
  clearTimeout(releaseTimer);
  releaseTimer = setTimeout(release, RELEASE_AFTER_MS); // an edit that changes nothing sends no value
  trigger('edit', payload);
}

function release() {
  inFlight = false;
  clearTimeout(releaseTimer);
  const next = waiting.shift();
  if (next) send(next);
}

function place(node, x0, y0, x1, y1, w, h) {
  node.style.left = (100 * Math.min(x0, x1)) / w + '%';
  node.style.top = (100 * Math.min(y0, y1)) / h + '%';
  node.style.width = (100 * Math.abs(x1 - x0)) / w + '%';
  node.style.height = (100 * Math.abs(y1 - y0)) / h + '%';
}

stage.addEventListener('pointerdown', (event) => {
  if (event.button !== undefined && event.button !== 0) return;
  stage.focus({ preventScroll: true });
  const p = stagePoint(event);
  const handle = event.target.closest('.lc-handle');
  const box = event.target.closest('.lc-box');
  if (handle && box) {
    const [x0, y0, x1, y1] = rectOf(box);
    drag = { mode: 'resize', node: box, index: Number(box.dataset.index), handle: handle.dataset.handle, start: p, rect: [x0, y0, x1, y1] };
  } else if (box) {
    const [x0, y0, x1, y1] = rectOf(box);
    drag = { mode: 'move', node: box, index: Number(box.dataset.index), start: p, rect: [x0, y0, x1, y1], moved: false };
  } else {
    drag = { mode: 'draw', start: p };
    ghost.className = 'lc-ghost lc-' + drawType;
    place(ghost, p.x, p.y, p.x, p.y, p.w, p.h);
    ghost.style.display = 'block';
  }
  stage.setPointerCapture(event.pointerId);
  event.preventDefault();
});

stage.addEventListener('pointermove', (event) => {
  if (!drag) return;
  const p = stagePoint(event);
  const dx = p.x - drag.start.x;
  const dy = p.y - drag.start.y;
  if (drag.mode === 'draw') {
    place(ghost, drag.start.x, drag.start.y, p.x, p.y, p.w, p.h);
  } else if (drag.mode === 'move') {
    if (Math.abs(dx) + Math.abs(dy) > 2) drag.moved = true;
    const [x0, y0, x1, y1] = drag.rect;
    const ddx = Math.min(Math.max(dx, -x0), p.w - x1);
    const ddy = Math.min(Math.max(dy, -y0), p.h - y1);
    drag.current = [x0 + ddx, y0 + ddy, x1 + ddx, y1 + ddy];
    place(drag.node, x0 + ddx, y0 + ddy, x1 + ddx, y1 + ddy, p.w, p.h);
  } else if (drag.mode === 'resize') {
    let [x0, y0, x1, y1] = drag.rect;
    const h = drag.handle;
    if (h.includes('w')) x0 = Math.min(Math.max(x0 + dx, 0), x1 - 1);
    if (h.includes('e')) x1 = Math.max(Math.min(x1 + dx, p.w), x0 + 1);
    if (h.includes('n')) y0 = Math.min(Math.max(y0 + dy, 0), y1 - 1);
    if (h.includes('s')) y1 = Math.max(Math.min(y1 + dy, p.h), y0 + 1);
    drag.current = [x0, y0, x1, y1];
    place(drag.node, x0, y0, x1, y1, p.w, p.h);
  }
});

function finish(event) {
  if (!drag) return;
  const d = drag;
  drag = null;
  const p = stagePoint(event);
  const size = [p.w, p.h];
  if (d.mode === 'draw') {
    ghost.style.display = 'none';
    const rect = [Math.min(d.start.x, p.x), Math.min(d.start.y, p.y), Math.max(d.start.x, p.x), Math.max(d.start.y, p.y)];
    if (rect[2] - rect[0] >= MIN_DRAW_PX && rect[3] - rect[1] >= MIN_DRAW_PX) {
      send({ op: 'draw', kind: drawType, rect: rect, size: size });
    } else if (current().selected !== null) {
      send({ op: 'select', index: null });
    }
  } else if (d.mode === 'move') {
    if (d.moved && d.current) send({ op: 'move', index: d.index, rect: d.current, size: size });
    else if (d.index !== current().selected) send({ op: 'select', index: d.index });
  } else if (d.mode === 'resize' && d.current) {
    send({ op: 'resize', index: d.index, rect: d.current, size: size });
  }
}

stage.addEventListener('pointerup', finish);
stage.addEventListener('pointercancel', (event) => {
  if (drag && drag.mode === 'draw') ghost.style.display = 'none';
  drag = null;
  render();
});

stage.addEventListener('keydown', (event) => {
  const v = current();
  const ctrl = event.ctrlKey || event.metaKey;
  const key = event.key;
  let payload = null;
  if (ctrl && (key === 'z' || key === 'Z')) payload = { op: event.shiftKey ? 'redo' : 'undo' };
  else if (ctrl && (key === 'y' || key === 'Y')) payload = { op: 'redo' };
  else if (v.selected !== null) {
    const step = event.shiftKey ? 10 : 1;
    if (key === 'Delete' || key === 'Backspace') payload = { op: 'delete', index: v.selected };
    else if (ctrl && (key === 'd' || key === 'D')) payload = { op: 'duplicate', index: v.selected };
    else if (key === ']') payload = { op: 'forward', index: v.selected };
    else if (key === '[') payload = { op: 'backward', index: v.selected };
    else if (key === 'Escape') payload = { op: 'select', index: null };
    else if (key === 'ArrowLeft') payload = { op: 'nudge', index: v.selected, dx: -step, dy: 0 };
    else if (key === 'ArrowRight') payload = { op: 'nudge', index: v.selected, dx: step, dy: 0 };
    else if (key === 'ArrowUp') payload = { op: 'nudge', index: v.selected, dx: 0, dy: -step };
    else if (key === 'ArrowDown') payload = { op: 'nudge', index: v.selected, dx: 0, dy: step };
  }
  if (!payload && !ctrl && (key === 'o' || key === 't')) {
    drawType = key === 'o' ? 'obj' : 'text';
    render();
    event.preventDefault();
    return;
  }
  if (payload) {
    event.preventDefault();
    send(payload);
  }
});

element.addEventListener('click', (event) => {
  const chip = event.target.closest('.lc-chip');
  if (chip) {
    send({ op: 'select', index: Number(chip.dataset.index) });
    return;
  }
  const tool = event.target.closest('[data-tool]');
  if (!tool) return;
  const v = current();
  const op = tool.dataset.tool;
  if (op === 'type') {
    drawType = tool.dataset.type;
    render();
  } else if (op === 'undo' || op === 'redo') {
    send({ op: op });
  } else if (v.selected !== null) {
    send({ op: op, index: v.selected });
  }
});

render();
watch('value', () => {
  render();
  release();
});
