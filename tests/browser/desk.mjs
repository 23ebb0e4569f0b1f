// The desk end to end in Debian's headless Chromium, driven by playwright-core.
//
// Run by tests/tests/desk_browser.rs, which starts pcscd, the virtual card and `civic desk`,
// and moves the card when this script asks: it prints `@@PULL` (and so on) on stdout and waits
// for `ok` on stdin. Environment: DESK_URL (the printed address with the token), DESK_PIN,
// DESK_CARD_ID, DESK_SCREENSHOTS (a directory for the PNGs).
//
// Every wait is for a condition on the page (generous timeouts for a loaded 2-core machine),
// never a sleep.

import { chromium } from 'playwright-core';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

const DESK_URL = need('DESK_URL');
const SHOTS = need('DESK_SCREENSHOTS');
const CARD_ID = need('DESK_CARD_ID');
let pin = need('DESK_PIN');
const ORIGIN = new URL(DESK_URL).origin;
const TIMEOUT = 45_000;

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
/** Ask the Rust test to do something to the card; resolves when it says `ok`. */
async function ask(cmd) {
  process.stdout.write(`@@${cmd}\n`);
  const { value, done } = await lines.next();
  if (done || value !== 'ok') throw new Error(`@@${cmd}: the test answered ${JSON.stringify(value)}`);
}

let steps = 0;
function step(name) {
  steps += 1;
  console.log(`step ${steps}: ${name}`);
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

async function text(page, sel) {
  return (await page.locator(sel).first().innerText()).trim();
}

async function shot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, name), fullPage: true });
}

/** The badge text in the credentials table row of `kind`. */
async function badge(page, kind) {
  return text(page, `#credentials tr[data-kind="${kind}"] .badge`);
}

async function scan(page) {
  await page.click('#scan');
  await page.waitForSelector('#verdict, .notice.err');
  if (await page.locator('.notice.err').count()) {
    throw new Error(`the scan failed on the page: ${await text(page, '.notice.err')}`);
  }
}

async function setStatus(page, kind, action) {
  await page.goto(`${ORIGIN}/office`);
  await page.fill('#status-card', CARD_ID);
  await page.selectOption('#status-kind', kind);
  await page.selectOption('#status-action', action);
  await page.click('#status-go');
  await page.waitForSelector('#status-changed');
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  // As known to work here (machine notes): no sandbox as root, no GPU, and none of Chromium's
  // own network traffic (this machine's network is closed). Playwright gives each launch a
  // fresh, empty profile directory.
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    // A container's /dev/shm may be 64 MB: Chromium's shared memory goes to /tmp instead.
    '--disable-dev-shm-usage',
  ],
  timeout: TIMEOUT,
});
let attacker;
try {
  const context = await browser.newContext({
    acceptDownloads: true,
    locale: 'en-US',
    viewport: { width: 1280, height: 900 },
  });
  context.setDefaultTimeout(TIMEOUT);
  const page = await context.newPage();
  page.on('pageerror', (e) => { throw new Error(`script error on the page: ${e}`); });
  // A Content-Security-Policy violation (an inline style or script the desk forgot) or a
  // failed request shows up as a console error.
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });

  step('the printed address sets the cookie and drops the token from the address');
  await page.goto(DESK_URL);
  check(page.url() === `${ORIGIN}/clinic`, `landed on ${page.url()}`);
  check(!(await page.content()).includes(new URL(DESK_URL).searchParams.get('token')), 'token in page');
  const cookies = await context.cookies(ORIGIN);
  const c = cookies.find((x) => x.name === 'civic_desk');
  check(c && c.httpOnly && c.sameSite === 'Strict', `cookie ${JSON.stringify(c)}`);

  step('live status shows the card');
  await page.waitForSelector('#readers li.present');
  await page.waitForSelector('body[data-live="1"]');

  step('clinic scan: verdict, one badge per credential, emergency data at once');
  await scan(page);
  check((await page.getAttribute('#verdict', 'class')).includes('valid'), 'verdict class');
  check((await text(page, '#verdict')).includes('VALID'), 'verdict text');
  check((await badge(page, 'identity')).includes('VALID'), 'identity badge');
  check((await badge(page, 'health')).includes('not read'), 'health not read without PIN');
  const emergency = await text(page, '#emergency');
  check(emergency.includes('A+') && emergency.includes('penicillin'), `emergency: ${emergency}`);
  check((await text(page, '#watermark')).includes('Registry block'), 'watermark');
  await shot(page, 'clinic.png');

  step('clinic: the citizen enters the PIN, the full health record shows');
  await page.fill('#consent-pin', pin);
  await page.click('#consent');
  await page.waitForSelector('#verdict');
  check((await badge(page, 'health')).includes('VALID'), 'health badge after consent');
  check((await text(page, '#credentials')).includes('asthma'), 'full health record');

  step('citizen: a wrong PIN says how many tries are left');
  await page.goto(`${ORIGIN}/citizen`);
  await page.fill('#pin', pin === '000000' ? '111111' : '000000');
  await page.click('#open');
  const wrong = await text(page, '#wrong-pin');
  check(/Wrong PIN: \d tries left/.test(wrong), `wrong PIN message: ${wrong}`);

  step('citizen: every record and the access log');
  await page.fill('#pin', pin);
  await page.click('#open');
  await page.waitForSelector('#records');
  check((await page.locator('article.record').count()) >= 4, 'records');
  check((await text(page, '#records')).includes('Alice Example'), 'identity record');
  const log = await text(page, '#log');
  check(log.includes('clinic-01') && log.includes('clinic'), `access log: ${log}`);
  check(!(await page.content()).includes(pin), 'PIN in the page');
  await shot(page, 'citizen.png');

  step('citizen: export a credential for another agency');
  await page.selectOption('#export-kind', 'education');
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export')]);
  const exported = JSON.parse(fs.readFileSync(await download.path(), 'utf8'));
  check(exported.format === 'civic-card/credential-export/v1' && exported.kind === 'education'
    && exported.card_id === CARD_ID && /^[0-9a-f]+$/.test(exported.record), 'export file');

  step('citizen: change the PIN');
  const newPin = pin === '135790' ? '246801' : '135790';
  await page.fill('#old-pin', pin);
  await page.fill('#new-pin', newPin);
  await page.fill('#new-pin2', newPin);
  await page.click('#change-pin');
  await page.waitForSelector('.notice.ok');
  check((await text(page, '.notice.ok')).includes('PIN changed'), 'PIN changed');
  pin = newPin;

  step('zh-CN: switch, read, switch back');
  await page.click('form.lang button');
  await page.waitForSelector('html[lang="zh-CN"]');
  check((await text(page, 'h1')) === '市民', 'Chinese heading');
  check((await text(page, '#records')).includes('有效'), 'Chinese verdicts');
  await shot(page, 'citizen-zh.png');
  await page.click('form.lang button');
  await page.waitForSelector('html[lang="en"]');

  step('the citizen session ends when the card is removed');
  await ask('PULL');
  await page.waitForURL(`${ORIGIN}/citizen?ended=1`);
  await page.waitForSelector('#open');
  check((await text(page, '.notice')).includes('session ended'), 'session ended notice');
  await ask('RESTORE');
  await page.waitForSelector('#readers li.present');

  step('office: suspend, reinstate and revoke; the clinic sees each');
  await setStatus(page, 'identity', 'suspend');
  await page.goto(`${ORIGIN}/clinic`);
  await scan(page);
  check((await badge(page, 'identity')).includes('SUSPENDED'), 'suspended identity');
  check((await page.getAttribute('#verdict', 'class')).includes('bad'), 'not valid when suspended');
  await setStatus(page, 'identity', 'reinstate');
  await setStatus(page, 'emergency', 'revoke');
  await shot(page, 'office.png');
  await page.goto(`${ORIGIN}/clinic`);
  await scan(page);
  check((await badge(page, 'identity')).includes('VALID'), 'reinstated identity');
  check((await badge(page, 'emergency')).includes('REVOKED'), 'revoked emergency');
  check((await text(page, '#verdict')).includes('NOT VALID'), 'overall not valid');
  await shot(page, 'clinic-revoked.png');

  step('a page of another origin cannot drive the desk');
  attacker = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end(`<!doctype html><form id="f" method="post" action="${ORIGIN}/office/status">
      <input name="card_id" value="${CARD_ID}"><input name="kind" value="identity">
      <input name="action" value="revoke"></form><script>document.getElementById('f').submit()</script>`);
  });
  await new Promise((r) => attacker.listen(0, '127.0.0.1', r));
  const evil = await context.newPage();
  await evil.goto(`http://127.0.0.1:${attacker.address().port}/`);
  await evil.waitForURL(`${ORIGIN}/office/status`);
  const refusal = await text(evil, 'main');
  check(refusal.includes('cross-origin'), `refusal page: ${refusal}`);
  await evil.close();
  await page.goto(`${ORIGIN}/clinic`);
  await scan(page);
  check((await badge(page, 'identity')).includes('VALID'), 'identity not revoked by the other page');

  step('clinic: the card pulled out in the middle of a scan');
  await page.goto(`${ORIGIN}/clinic`);
  // A second tab watches the live status while the first one waits for its scan.
  const watcher = await context.newPage();
  await watcher.goto(`${ORIGIN}/clinic`);
  await watcher.waitForSelector('body[data-live="1"]');
  await ask('PAUSE');
  await page.click('#scan', { noWaitAfter: true });
  await watcher.waitForSelector('#busy:not([hidden])');
  await ask('PULL');
  await page.waitForSelector('.notice.err');
  const pulled = await text(page, '.notice.err');
  check(pulled.includes('card was removed'), `card pulled message: ${pulled}`);
  await ask('RESTORE');
  await watcher.waitForSelector('#busy', { state: 'hidden' });
  await watcher.close();
  await page.waitForSelector('#readers li.present');

  step('office: provision a blank card from the form');
  await ask('BLANK');
  await page.goto(`${ORIGIN}/office`);
  await page.fill('#name', '陈伟 <Chen Wei>');
  await page.fill('#birth_date', '1985-06-30');
  await page.fill('#blood_type', 'O+');
  await page.fill('#allergies', 'pollen; latex');
  await page.fill('#emergency_contact', 'Li Na +86 21 5555 0199');
  await page.fill('#prov-pin', '864209');
  await page.fill('#prov-pin2', '864209');
  await page.click('#provision-go');
  await page.waitForSelector('#provisioned');
  const provisioned = await text(page, '.notice.ok');
  check(provisioned.includes('provisioned') && provisioned.includes('CIV-'), `provisioned: ${provisioned}`);

  step('office: batch upload, a broken row named, a live progress bar');
  const csv = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'desk-batch-')), 'batch.csv');
  fs.writeFileSync(csv, [
    'card_id,name,birth_date,pin,blood_type,allergies,emergency_contact,chronic_conditions,vaccinations,degrees',
    'CIV-2026-0000-2001,Zhang San,1979-02-14,551177,B+,,Wang Wu +86 10 5555 0111,,,',
    'CIV-2026-0000-2002,Broken Row,1979-02-30x,551178,,,,,,',
    '',
  ].join('\n'));
  await page.setInputFiles('#batch-file', csv);
  await page.click('#batch-go');
  await page.waitForURL(`${ORIGIN}/office/batch`);
  // No blank card yet (the reader holds the card just provisioned): the run waits and says so.
  await page.waitForSelector('#batch-bar');
  await page.waitForFunction(() => document.getElementById('batch-note')?.textContent.includes('Insert'));
  check((await text(page, '#batch-problems')).includes('Line 3'), 'broken row named before the run');
  await shot(page, 'batch-progress.png');
  await ask('BLANK');
  await page.waitForSelector('#batch-done');
  const done = await text(page, '#batch-done');
  check(done.includes('1 provisioned') && done.includes('1 skipped'), `batch summary: ${done}`);
  check((await text(page, '#batch-problems')).includes('birth_date'), 'broken row reason');
  await shot(page, 'batch.png');

  check(consoleErrors.length === 0, `console errors on the desk's pages: ${consoleErrors.join(' | ')}`);
  console.log(`DONE ${steps} steps`);
} finally {
  if (attacker) attacker.close();
  await browser.close();
}
process.exit(0);
