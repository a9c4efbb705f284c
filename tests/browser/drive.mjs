// Drives Debian's Chromium through the test EHR page (page/) with playwright-core; no browser
// download. Called by tests/test_browser.py:
//
//   node drive.mjs plan.json > results.json
//
// plan.json: {pageUrl, screenshotDir, cases: [{name, config, accept?, dismiss?}]}, where
// `config` is the page's configuration (see page/ehr.js), `accept` means "click the first
// suggestion" and `dismiss` means "dismiss the first card with its first override reason".
// Prints one JSON object: per case, the cards as displayed, the feedback given, and every
// console error or uncaught page error. Assertions are the Python test's job.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
// The probe's flags for this machine (closed network: no background connections).
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const TIMEOUT_MS = 20_000;

const plan = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
const results = [];
try {
  for (const testCase of plan.cases) {
    results.push(await runCase(testCase));
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify({ results }));

async function runCase({ name, config, accept, dismiss }) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(message.text());
  });
  page.on('pageerror', (error) => errors.push(`uncaught: ${error.message}`));
  const result = { name, errors, cards: [], accepted: null, overridden: null };
  try {
    await page.goto(`${plan.pageUrl}#${encodeURIComponent(JSON.stringify(config))}`);
    await page.waitForSelector('#status[data-state]', { timeout: TIMEOUT_MS });
    result.status = await page.textContent('#status');
    result.cards = await page.$$eval('.card', (nodes) => nodes.map((node) => ({
      uuid: node.dataset.uuid,
      topic: node.dataset.topic,
      indicator: node.dataset.indicator,
      summary: node.querySelector('.summary').textContent,
      detailHtml: node.querySelector('.detail').innerHTML,
      source: node.querySelector('.source').textContent,
      suggestions: [...node.querySelectorAll('.suggestion')].map((b) => ({ uuid: b.dataset.suggestion, label: b.textContent })),
      links: [...node.querySelectorAll('.link')].map((a) => a.href),
      overrideReasons: [...node.querySelectorAll('.override-reason option')].map((o) => o.value).filter(Boolean),
    })));
    if (accept) {
      const card = page.locator('.card', { has: page.locator('.suggestion') }).first();
      const button = card.locator('.suggestion').first();
      result.accepted = { card: await card.getAttribute('data-uuid'), suggestion: await button.getAttribute('data-suggestion') };
      await button.click();
      await page.waitForSelector(`.card[data-uuid="${result.accepted.card}"][data-feedback="accepted"]`, { timeout: TIMEOUT_MS });
    }
    if (dismiss) {
      const card = page.locator('.card', { has: page.locator('.override-reason') }).last();
      const reason = await card.locator('.override-reason option').nth(1).getAttribute('value');
      result.overridden = { card: await card.getAttribute('data-uuid'), reason };
      await card.locator('.override-reason').selectOption(reason);
      await card.locator('.dismiss').click();
      await page.waitForSelector(`.card[data-uuid="${result.overridden.card}"][data-feedback="overridden"]`, { timeout: TIMEOUT_MS });
    }
  } catch (error) {
    errors.push(`driver: ${error.message}`);
  } finally {
    await page.screenshot({ path: join(plan.screenshotDir, `${name}.png`), fullPage: true });
    await context.close();
  }
  return result;
}
