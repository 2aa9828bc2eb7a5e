// The segloss web demo: edits a mask and a prediction, evaluates the chosen losses on WebGPU
// through the wasm build of the crate, and shows values, timings and the gradient.
import init, { WebEngine, roads_mask, scene_labels, npy_f32, npy_labels } from './pkg/segloss_web.js';

const H = 256, W = 256, SCENE_CLASSES = 4;
const $ = (id) => document.getElementById(id);
const PALETTE = [[20, 20, 30], [240, 200, 40], [60, 170, 240], [230, 70, 90]];

const state = {
  engine: null,
  example: 'roads',
  mode: 'binary',
  classes: 1,
  target: new Float32Array(H * W), // 0/1 mask or class index per pixel
  logits: null,
  input: null, // what is evaluated: the logits, or their probabilities
  selected: 0,
  results: [],
  busy: false,
  pending: false,
  evaluations: 0,
  grad: null,
  statusLine: '',
};

// Exposed for tests and the curious.
window.segloss = {
  ready: false,
  error: null,
  state: () => ({ mode: state.mode, example: state.example, results: state.results, metrics: state.metrics,
                  evaluations: state.evaluations, probs: $('probs').checked, status: $('status').textContent,
                  maxLabel: state.target.reduce((a, v) => Math.max(a, v), 0), selected: state.selected,
                  losses: $('losses').value, info: state.engine ? JSON.parse(state.engine.info()) : null }),
  exportNpy: () => ({
    logits: b64(npy_f32(state.input, [1, state.classes, H, W])),
    probs: $('probs').checked,
    target: state.mode === 'binary' ? b64(npy_f32(state.target, [1, 1, H, W])) : b64(npy_labels(state.target, [1, H, W])),
    mode: state.mode,
  }),
};

// The module's error for these multiclass labels of a 1x2x2x2 input (null when it evaluates):
// what a caller of the module itself sees (the page sends whole labels only).
window.segloss.labelError = async (labels) => {
  try {
    await state.engine.evaluate(new Float32Array(8), Float32Array.from(labels), [1, 2, 2, 2], 'multiclass', 'ce', 0, false);
    return null;
  } catch (e) {
    return String(e && e.message || e);
  }
};

// Times each default loss once on a 512x512 road mask with a noisy prediction (for the README).
window.segloss.time512 = async () => {
  const n = 512, mask = roads_mask(n, n, 3), noise = gaussian(99);
  const logits = Float32Array.from(mask, (m) => 6 * (m - 0.5) + 1.5 * noise());
  const losses = 'bce\ndice\nfocal:alpha=0.25\nlovasz\nbce+dice';
  await state.engine.evaluate(logits, mask, [1, 1, n, n], 'binary', losses, 0, false); // warm-up
  return JSON.parse(await state.engine.evaluate(logits, mask, [1, 1, n, n], 'binary', losses, 0, false)).results;
};

// The brush class as a channel of the current example: a whole number in 1..C-1 (class 0 is what
// shift-drag paints), whatever was typed into the box.
function brushClass() {
  if (state.mode === 'binary') return 1;
  const v = Math.round(+$('brush').value);
  return Number.isFinite(v) ? Math.min(Math.max(v, 1), state.classes - 1) : 1;
}

// The losses the page evaluates: the non-empty lines of the text box.
const lossLines = () => $('losses').value.split('\n').map((t) => t.trim()).filter((t) => t !== '');

function b64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

// Deterministic noise: the same sliders give the same prediction.
function gaussian(seed) {
  let x = seed >>> 0 || 1;
  const next = () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return (x + 0.5) / 4294967296; };
  return () => Math.sqrt(-2 * Math.log(next())) * Math.cos(2 * Math.PI * next());
}

function boxBlur(src, r) {
  if (r === 0) return src;
  const tmp = new Float32Array(H * W), out = new Float32Array(H * W);
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
    let s = 0, n = 0;
    for (let i = Math.max(0, x - r); i <= Math.min(W - 1, x + r); i++) { s += src[y * W + i]; n++; }
    tmp[y * W + x] = s / n;
  }
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
    let s = 0, n = 0;
    for (let i = Math.max(0, y - r); i <= Math.min(H - 1, y + r); i++) { s += tmp[i * W + x]; n++; }
    out[y * W + x] = s / n;
  }
  return out;
}

function loadExample(name) {
  state.example = name;
  if (name === 'scene') {
    state.mode = 'multiclass'; state.classes = SCENE_CLASSES;
    state.target = Float32Array.from(scene_labels(SCENE_CLASSES, H, W, 7));
    if ($('losses').value.split('\n')[0].trim() === 'bce') $('losses').value = document.querySelectorAll('[data-preset]')[1].dataset.preset;
  } else {
    state.mode = 'binary'; state.classes = 1;
    if (name === 'roads') state.target = Float32Array.from(roads_mask(H, W, 11));
    else {
      state.target = new Float32Array(H * W);
      const r = Math.sqrt(0.001 * H * W / Math.PI);
      for (let y = 0; y < H; y++) for (let x = 0; x < W; x++)
        if ((y - 150) ** 2 + (x - 90) ** 2 <= r * r) state.target[y * W + x] = 1;
    }
    if ($('losses').value.split('\n')[0].trim() === 'ce') $('losses').value = document.querySelectorAll('[data-preset]')[0].dataset.preset;
  }
  $('brush').max = state.classes === 1 ? 1 : state.classes - 1;
  $('brush').value = 1;
}

function makeLogits() {
  const shift = +$('shift').value, blur = +$('blur').value, sigma = +$('noise').value / 100, conf = +$('conf').value;
  for (const id of ['shift', 'blur', 'noise', 'conf']) $(id + 'v').textContent = $(id).value;
  const noise = gaussian(12345);
  const logits = new Float32Array(state.classes * H * W);
  for (let c = 0; c < state.classes; c++) {
    const m = new Float32Array(H * W);
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
      const sx = x - shift;
      if (sx < 0 || sx >= W) continue;
      const t = state.target[y * W + sx];
      m[y * W + x] = state.mode === 'binary' ? t : (t === c ? 1 : 0);
    }
    const b = boxBlur(m, blur);
    for (let i = 0; i < H * W; i++) logits[c * H * W + i] = conf * (b[i] - 0.5) + sigma * noise();
  }
  state.logits = logits;
  state.input = $('probs').checked ? probabilities(logits) : logits;
}

// The probabilities of the logits: sigmoid (binary), softmax over the classes (multiclass).
function probabilities(logits) {
  const p = new Float32Array(logits.length);
  if (state.mode === 'binary') {
    for (let i = 0; i < logits.length; i++) p[i] = 1 / (1 + Math.exp(-logits[i]));
    return p;
  }
  for (let i = 0; i < H * W; i++) {
    let mx = -Infinity, s = 0;
    for (let c = 0; c < state.classes; c++) mx = Math.max(mx, logits[c * H * W + i]);
    for (let c = 0; c < state.classes; c++) s += Math.exp(logits[c * H * W + i] - mx);
    for (let c = 0; c < state.classes; c++) p[c * H * W + i] = Math.exp(logits[c * H * W + i] - mx) / s;
  }
  return p;
}

function draw() {
  const fg = state.target.reduce((a, v) => a + (v > 0 ? 1 : 0), 0) / (H * W);
  $('fg').textContent = `${(100 * fg).toFixed(2)}% foreground`;
  const mk = $('mask').getContext('2d'), mimg = mk.createImageData(W, H);
  const pk = $('pred').getContext('2d'), pimg = pk.createImageData(W, H);
  const k = state.mode === 'binary' ? 0 : brushClass();
  for (let i = 0; i < H * W; i++) {
    const col = state.mode === 'binary' ? (state.target[i] > 0 ? [255, 255, 255] : [0, 0, 0])
      : (PALETTE[state.target[i]] || [128, 128, 128]);
    mimg.data.set([...col, 255], 4 * i);
    let p;
    if (state.mode === 'binary') p = 1 / (1 + Math.exp(-state.logits[i]));
    else {
      let mx = -Infinity, s = 0;
      for (let c = 0; c < state.classes; c++) mx = Math.max(mx, state.logits[c * H * W + i]);
      for (let c = 0; c < state.classes; c++) s += Math.exp(state.logits[c * H * W + i] - mx);
      p = Math.exp(state.logits[k * H * W + i] - mx) / s;
    }
    const v = Math.round(255 * p);
    pimg.data.set([v, v, v, 255], 4 * i);
  }
  mk.putImageData(mimg, 0, 0);
  pk.putImageData(pimg, 0, 0);
}

function drawHeat() {
  const g = state.grad, hk = $('heat').getContext('2d'), img = hk.createImageData(W, H);
  const r = state.results[state.selected];
  if (!g || g.length !== state.classes * H * W) {
    hk.clearRect(0, 0, W, H);
    $('heatinfo').textContent = r ? `${r.loss}: no gradient${r.error ? ' (see its error)' : ''}` : '';
    return;
  }
  const k = state.mode === 'binary' ? 0 : brushClass();
  let mx = 0;
  for (let i = 0; i < H * W; i++) mx = Math.max(mx, Math.abs(g[k * H * W + i]));
  for (let i = 0; i < H * W; i++) {
    const v = mx > 0 ? g[k * H * W + i] / mx : 0;
    const a = Math.round(255 * Math.sqrt(Math.abs(v)));
    img.data.set(v >= 0 ? [255, 255 - a, 255 - a, 255] : [255 - a, 255 - a, 255, 255], 4 * i);
  }
  hk.putImageData(img, 0, 0);
  $('heatinfo').textContent = r ? `${r.loss}: max |grad| ${mx.toExponential(2)}${state.mode === 'multiclass' ? ` (class ${k} channel)` : ''}` : '';
}

function showResults() {
  const body = $('results').querySelector('tbody');
  body.innerHTML = '';
  let total = 0;
  state.results.forEach((r, i) => {
    const tr = document.createElement('tr');
    if (i === state.selected) tr.className = 'sel';
    const name = document.createElement('td'); name.textContent = r.loss;
    const val = document.createElement('td');
    const ms = document.createElement('td');
    if (r.error) {
      val.innerHTML = ''; const e = document.createElement('div'); e.className = 'err'; e.textContent = r.error; val.appendChild(e);
      tr.dataset.error = '1';
    } else {
      val.textContent = r.value.toFixed(6); ms.textContent = r.ms.toFixed(1); total += r.ms;
    }
    tr.append(name, val, ms);
    tr.onclick = () => { state.selected = i; evaluate(); };
    body.appendChild(tr);
  });
  $('total').textContent = `${state.evaluations} evaluations; last round ${total.toFixed(1)} ms on the GPU for ${state.results.length} losses at ${W}x${H}`;
}

async function evaluate() {
  if (!state.engine) return;
  if (state.busy) { state.pending = true; return; }
  state.busy = true;
  try {
    do {
      state.pending = false;
      // one round's failure is shown, and an edit queued meanwhile still gets its round
      try {
        await evaluateOnce();
      } catch (e) {
        $('status').textContent = `error: ${e.message || e}`;
        window.segloss.error = String(e.message || e);
        // the mask was redrawn for this round: no earlier round's gradient stays beside it
        state.grad = null;
        drawHeat();
      }
    } while (state.pending);
  } finally {
    state.busy = false;
  }
}

async function evaluateOnce() {
  makeLogits();
  draw();
  // the selected row of the list being evaluated (a shorter list selects its first)
  if (state.selected >= lossLines().length) state.selected = 0;
  const json = await state.engine.evaluate(state.input, state.target, [1, state.classes, H, W], state.mode,
                                           $('losses').value, state.selected, $('probs').checked);
  $('gradof').textContent = $('probs').checked ? 'd loss / d probabilities' : 'd loss / d logits';
  const parsed = JSON.parse(json);
  state.results = parsed.results;
  state.metrics = parsed.metrics;
  $('metrics').textContent = 'hard prediction: ' + parsed.metrics.map((m) =>
    `${m.metric === 'iou' ? 'IoU' : 'Dice score'} ${m.value === null ? (m.error ? `– (${m.error})` : '–') : m.value.toFixed(4)}`).join(', ');
  state.grad = state.engine.grad();
  state.evaluations++;
  showResults();
  drawHeat();
  // a round that worked clears an earlier round's error
  $('status').textContent = state.statusLine;
  window.segloss.error = null;
}

function paint(ev) {
  const rect = $('mask').getBoundingClientRect();
  const x = Math.floor((ev.clientX - rect.left) * W / rect.width), y = Math.floor((ev.clientY - rect.top) * H / rect.height);
  const v = ev.shiftKey ? 0 : brushClass();
  for (let dy = -3; dy <= 3; dy++) for (let dx = -3; dx <= 3; dx++) {
    const yy = y + dy, xx = x + dx;
    if (dx * dx + dy * dy <= 9 && yy >= 0 && xx >= 0 && yy < H && xx < W) state.target[yy * W + xx] = v;
  }
  evaluate();
}

async function main() {
  await init();
  loadExample('roads');
  makeLogits();
  draw();
  if (!navigator.gpu) {
    $('nogpu').style.display = 'block';
    $('nogpu').textContent = 'This browser exposes no WebGPU (navigator.gpu is missing). Use a recent Chrome, Edge or Firefox with WebGPU enabled.';
    $('status').textContent = 'no WebGPU';
    window.segloss.error = 'no WebGPU';
    return;
  }
  try {
    state.engine = await WebEngine.open();
  } catch (e) {
    $('nogpu').style.display = 'block';
    $('nogpu').textContent = `WebGPU is present but no adapter could be opened: ${e.message || e}`;
    $('status').textContent = 'no WebGPU adapter';
    window.segloss.error = String(e.message || e);
    return;
  }
  const info = JSON.parse(state.engine.info());
  state.statusLine = `adapter: ${info.name || '(unnamed)'} (${info.backend}, ${info.type})`;
  $('status').textContent = state.statusLine;
  let drawing = false;
  $('mask').addEventListener('pointerdown', (e) => { drawing = true; paint(e); });
  $('mask').addEventListener('pointermove', (e) => { if (drawing) paint(e); });
  window.addEventListener('pointerup', () => { drawing = false; });
  for (const id of ['shift', 'blur', 'noise', 'conf', 'brush', 'probs']) $(id).addEventListener('input', evaluate);
  $('losses').addEventListener('input', evaluate);
  $('example').addEventListener('change', () => { loadExample($('example').value); state.selected = 0; evaluate(); });
  for (const b of document.querySelectorAll('[data-preset]')) b.onclick = () => { $('losses').value = b.dataset.preset; state.selected = 0; evaluate(); };
  await evaluate();
  window.segloss.ready = true;
}

main().catch((e) => { $('status').textContent = `error: ${e.message || e}`; window.segloss.error = String(e.message || e); });
