// End-to-end test of the web demo in headless Chromium (WebGPU on SwiftShader): the page's loss
// values equal the native `segloss eval --json` on the same inputs, edits change them, a bad loss
// text shows an inline error, and the screenshot is not blank.
// Usage: node web/test/e2e.mjs (after web/build.sh and cargo build --release).
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const dist = path.join(repo, 'web', 'dist');
const artifacts = process.env.SEGLOSS_ARTIFACTS || path.join(repo, 'web', 'test-artifacts');
const native = path.join(repo, 'target', 'release', 'segloss');
fs.mkdirSync(artifacts, { recursive: true });

let passed = 0, failed = 0;
function check(name, ok, detail = '') {
  if (ok) { passed++; console.log(`ok   ${name}`); } else { failed++; console.log(`FAIL ${name} ${detail}`); }
}

const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm' };
const server = http.createServer((req, res) => {
  let p = decodeURIComponent(new URL(req.url, 'http://localhost').pathname);
  if (p.endsWith('/')) p += 'index.html';
  const f = path.join(dist, p);
  if (!f.startsWith(dist) || !fs.existsSync(f) || fs.statSync(f).isDirectory()) { res.writeHead(404); res.end(); return; }
  res.writeHead(200, { 'content-type': types[path.extname(f)] || 'application/octet-stream' });
  fs.createReadStream(f).pipe(res);
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const url = `http://127.0.0.1:${server.address().port}/`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--enable-unsafe-webgpu', '--headless=new', '--no-sandbox', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-quic', '--enable-features=Vulkan'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.on('console', (m) => { if (m.type() === 'error') console.log(`page console: ${m.text()}`); });
  page.on('pageerror', (e) => console.log(`page error: ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => window.segloss && (window.segloss.ready || window.segloss.error), null, { timeout: 300000 });
  const err = await page.evaluate(() => window.segloss.error);
  check('page loads and opens a WebGPU adapter', !err, err || '');
  if (err) throw new Error(err);
  const st = await page.evaluate(() => window.segloss.state());
  console.log(`adapter: ${JSON.stringify(st.info)}`);
  check('every default loss evaluates', st.results.length >= 5 && st.results.every((r) => r.error === null),
        JSON.stringify(st.results));

  // Same inputs through the native CLI.
  const exp = await page.evaluate(() => window.segloss.exportNpy());
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'segloss-web-'));
  fs.writeFileSync(path.join(tmp, 'logits.npy'), Buffer.from(exp.logits, 'base64'));
  fs.writeFileSync(path.join(tmp, 'target.npy'), Buffer.from(exp.target, 'base64'));
  const args = ['eval', '--logits', path.join(tmp, 'logits.npy'), '--target', path.join(tmp, 'target.npy'), '--json'];
  for (const r of st.results) args.push('--loss', r.loss);
  for (const m of st.metrics) args.push('--metric', m.metric);
  const out = JSON.parse(execFileSync(native, args, { encoding: 'utf8' }));
  let worst = 0;
  const agree = out.results.every((n, i) => {
    const w = st.results[i];
    const d = Math.abs(w.value - n.value);
    worst = Math.max(worst, d / Math.max(Math.abs(n.value), 1e-12));
    return n.error === null && w.loss === n.loss && d <= 1e-5 + 2e-4 * Math.abs(n.value);
  });
  check('page values equal the native segloss eval', agree, `worst relative difference ${worst}`);
  const metricsAgree = st.metrics.length === 2 && out.metrics.every((n, i) =>
    n.metric === st.metrics[i].metric && typeof n.value === 'number' && Math.abs(n.value - st.metrics[i].value) <= 1e-12);
  check('the page shows the native IoU and Dice score', metricsAgree,
        `${JSON.stringify(st.metrics)} vs ${JSON.stringify(out.metrics)}`);
  console.log(`native (${out.device.name}) vs page: worst relative difference ${worst.toExponential(2)}; ` +
    out.results.map((n, i) => `${n.loss} ${n.value} / ${st.results[i].value}`).join(', '));

  // A slider edit changes the values.
  const before = st.results.map((r) => r.value);
  const n0 = st.evaluations;
  await page.$eval('#noise', (el) => { el.value = '250'; el.dispatchEvent(new Event('input')); });
  await page.waitForFunction((n) => window.segloss.state().evaluations > n, n0, { timeout: 120000 });
  await page.waitForTimeout(200);
  let now = await page.evaluate(() => window.segloss.state());
  check('the noise slider changes the values', now.results.some((r, i) => r.value !== before[i]));

  // A drawn stroke changes the values.
  const box = await page.locator('#mask').boundingBox();
  const n1 = now.evaluations;
  const afterSlider = now.results.map((r) => r.value);
  await page.mouse.move(box.x + 20, box.y + 200);
  await page.mouse.down();
  for (let i = 0; i < 10; i++) await page.mouse.move(box.x + 20 + 20 * i, box.y + 200 - 5 * i);
  await page.mouse.up();
  await page.waitForFunction((n) => window.segloss.state().evaluations > n, n1, { timeout: 120000 });
  await page.waitForTimeout(500);
  now = await page.evaluate(() => window.segloss.state());
  check('a drawn stroke changes the values', now.results.some((r, i) => r.value !== afterSlider[i]));

  // A bad loss text shows an inline error and the other losses still evaluate.
  const n2 = now.evaluations;
  await page.$eval('#losses', (el) => { el.value = 'dicee\nbce\ndice:pool=everything'; el.dispatchEvent(new Event('input')); });
  await page.waitForFunction((n) => window.segloss.state().evaluations > n, n2, { timeout: 120000 });
  await page.waitForTimeout(300);
  now = await page.evaluate(() => window.segloss.state());
  const inline = await page.locator('#results .err').allTextContents();
  check('a bad loss text shows an inline error', inline.length === 2 && inline[0].includes("unknown loss 'dicee'"), JSON.stringify(inline));
  check('the good loss next to it still evaluates', now.results[1].error === null && typeof now.results[1].value === 'number');

  // Probabilities as input: the page's values equal the native `eval --probs`, and the Lovász
  // hinge (defined on logits) refuses them.
  const n3 = now.evaluations;
  await page.$eval('#losses', (el) => { el.value = 'bce\ndice\ndice@monai:weights=1\nfocal:alpha=0.25\nlovasz'; el.dispatchEvent(new Event('input')); });
  await page.waitForFunction((n) => window.segloss.state().evaluations > n, n3, { timeout: 120000 });
  const n4 = (await page.evaluate(() => window.segloss.state())).evaluations;
  await page.$eval('#probs', (el) => { el.checked = true; el.dispatchEvent(new Event('input')); });
  await page.waitForFunction((n) => window.segloss.state().evaluations > n, n4, { timeout: 120000 });
  await page.waitForTimeout(300);
  const pst = await page.evaluate(() => window.segloss.state());
  const pexp = await page.evaluate(() => window.segloss.exportNpy());
  fs.writeFileSync(path.join(tmp, 'probs.npy'), Buffer.from(pexp.logits, 'base64'));
  fs.writeFileSync(path.join(tmp, 'ptarget.npy'), Buffer.from(pexp.target, 'base64'));
  const pargs = ['eval', '--probs', path.join(tmp, 'probs.npy'), '--target', path.join(tmp, 'ptarget.npy'), '--json'];
  for (const r of pst.results) pargs.push('--loss', r.loss);
  const pout = JSON.parse(execFileSync(native, pargs, { encoding: 'utf8' }));
  const pagree = pexp.probs && pst.probs && pout.input === 'probs' && pout.results.every((n, i) => {
    const w = pst.results[i];
    if (n.error !== null || w.error !== null) return n.error !== null && w.error !== null;
    return Math.abs(w.value - n.value) <= 1e-5 + 2e-4 * Math.abs(n.value);
  });
  check('with probabilities the page equals the native eval --probs', pagree,
        pout.results.map((n, i) => `${n.loss} ${n.value ?? n.error} / ${pst.results[i].value ?? pst.results[i].error}`).join('; '));
  check('the hinge refuses probabilities inline', pst.results[4].error !== null && pst.results[4].error.includes('logits'),
        JSON.stringify(pst.results[4]));
  // Selecting the refused row shows no gradient rather than the last one computed.
  await page.click('#results tbody tr:nth-child(5)');
  await page.waitForFunction((n) => window.segloss.state().evaluations > n && window.segloss.state().selected === 4,
                             pst.evaluations, { timeout: 120000 });
  await page.waitForTimeout(300);
  const heat = await page.evaluate(() => ({
    drawn: document.getElementById('heat').getContext('2d').getImageData(0, 0, 256, 256).data.some((v) => v !== 0),
    info: document.getElementById('heatinfo').textContent,
  }));
  check('a loss without a gradient leaves no stale heat map', !heat.drawn && heat.info.includes('no gradient'),
        JSON.stringify(heat));
  await page.$eval('#probs', (el) => { el.checked = false; el.dispatchEvent(new Event('input')); });

  // Back to the default losses, then a screenshot that is not blank.
  await page.click('[data-preset]');
  await page.waitForTimeout(1500);
  const shot = path.join(artifacts, 'web-demo.png');
  await page.screenshot({ path: shot, fullPage: true });
  const size = fs.statSync(shot).size;
  const heatVaries = await page.evaluate(() => {
    const d = document.getElementById('heat').getContext('2d').getImageData(0, 0, 256, 256).data;
    const seen = new Set();
    for (let i = 0; i < d.length; i += 4 * 97) seen.add(`${d[i]},${d[i + 1]},${d[i + 2]}`);
    return seen.size;
  });
  check('the screenshot is not blank', size > 30000 && heatVaries > 10, `png ${size} bytes, ${heatVaries} heat colours`);
  console.log(`screenshot: ${shot}`);

  // (review) Multiclass labels that are not whole numbers were rounded (NaN to class 0) by the
  // module: they are an error that names them; whole labels evaluate.
  const le = await page.evaluate(async () => [await window.segloss.labelError([0, 1.5, 1, 0]),
                                              await window.segloss.labelError([0, NaN, 1, 0]),
                                              await window.segloss.labelError([0, 1, 1, 0])]);
  check('labels that are not whole numbers are an error', le[0] !== null && le[0].includes('not a whole number') &&
        le[1] !== null && le[1].includes('not a whole number') && le[2] === null, JSON.stringify(le));

  // How long a 512x512 evaluation takes in the page.
  const t = await page.evaluate(() => window.segloss.time512());
  console.log(`512x512 in the page: ${t.map((r) => `${r.loss} ${r.ms.toFixed(1)} ms`).join(', ')}`);
  check('a 512x512 evaluation runs in the page', t.length > 0 && t.every((r) => r.error === null), JSON.stringify(t));

  // The multiclass scene painted with a class the box does not allow (5 of 4 classes): the
  // brush keeps to the scene's classes, and the page goes on evaluating without an error.
  const m0 = (await page.evaluate(() => window.segloss.state())).evaluations;
  await page.selectOption('#example', 'scene');
  await page.waitForFunction((n) => window.segloss.state().evaluations > n && window.segloss.state().mode === 'multiclass',
                             m0, { timeout: 120000 });
  await page.$eval('#brush', (el) => { el.value = '5'; el.dispatchEvent(new Event('input')); });
  await page.waitForTimeout(1000);
  const m1 = (await page.evaluate(() => window.segloss.state())).evaluations;
  await page.mouse.move(box.x + 60, box.y + 60);
  await page.mouse.down();
  for (let i = 0; i < 5; i++) await page.mouse.move(box.x + 60 + 10 * i, box.y + 60);
  await page.mouse.up();
  await page.waitForFunction((n) => window.segloss.state().evaluations > n, m1, { timeout: 120000 });
  await page.waitForTimeout(1500);
  const mc = await page.evaluate(() => ({ st: window.segloss.state(), error: window.segloss.error }));
  check('a brush class past the scene\'s classes paints its last class, with no error',
        mc.error === null && !mc.st.status.startsWith('error') && mc.st.maxLabel === 3 &&
        mc.st.results.length > 0 && mc.st.results.every((r) => r.error === null),
        JSON.stringify({ error: mc.error, status: mc.st.status, maxLabel: mc.st.maxLabel, results: mc.st.results }));
} catch (e) {
  check('no exception', false, String(e && e.stack || e));
} finally {
  await browser.close();
  server.close();
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
