// Drives Debian's Chromium through the project's EHR page (page/) to the assessment app:
// the patient's cards are shown, the `smart` link of the lifestyle card is clicked (the page
// registers the launch with the FHIR server as the CDS Hooks sandbox does and opens the app),
// and the app is answered on a phone-sized screen with the keyboard alone: the caffeine
// answer typed, "Yes" to weakness with the space bar, saved with Enter.
// Called by tests/test_assessment_browser.py:
//
//   node assessment.mjs plan.json > result.json
//
// plan.json: {pageUrl, config, screenshot}. Prints {cards, status, errors, overflow}: the
// topics shown, the app's status line after saving, console and page errors of both pages,
// and whether the app scrolls sideways.

import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const TIMEOUT_MS = 30_000;

const plan = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
const errors = [];
const watch = (page) => {
  page.on('console', (message) => {
    // The browser's own favicon request is not the page's.
    if (message.type() === 'error' && !message.text().includes('404')) errors.push(message.text());
  });
  page.on('pageerror', (error) => errors.push(String(error)));
};
let result;
try {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const ehr = await context.newPage();
  watch(ehr);
  await ehr.goto(`${plan.pageUrl}#${encodeURIComponent(JSON.stringify(plan.config))}`);
  await ehr.waitForSelector('#status[data-state]', { timeout: TIMEOUT_MS });
  const cards = await ehr.$$eval('.card', (nodes) => nodes.map((node) => node.dataset.topic));
  const opened = context.waitForEvent('page', { timeout: TIMEOUT_MS });
  await ehr.locator('.card[data-topic="lifestyle-review"] .smart-link').click();
  const app = await opened;
  watch(app);
  const caffeine = app.locator('input[id="caffeine-drinks/1/1"]');
  await caffeine.waitFor({ timeout: TIMEOUT_MS });
  await caffeine.focus();
  await app.keyboard.type('6');
  await app.locator('input[name="radiogroup_weakness/1/1"]').first().focus();
  await app.keyboard.press('Space');
  await app.locator('#submit').focus();
  await app.keyboard.press('Enter');
  await app.locator('#status.ok, #status.error').waitFor({ timeout: TIMEOUT_MS });
  const overflow = await app.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  await app.screenshot({ path: plan.screenshot, fullPage: true });
  result = { cards, status: await app.locator('#status').textContent(), errors, overflow };
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result));
