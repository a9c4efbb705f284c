// Drives Debian's Chromium through the assessment app (/app/) on a phone-sized screen, with
// the keyboard only: types the caffeine answer, answers "Yes" to weakness with the space bar,
// saves with Enter. Called by tests/test_assessment_browser.py:
//
//   node assessment.mjs plan.json > result.json
//
// plan.json: {launchUrl, screenshot}. Prints {status, errors, overflow}: the page's status
// line after saving, console and page errors, and whether the page scrolls sideways.

import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const TIMEOUT_MS = 30_000;

const plan = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
const errors = [];
let result;
try {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const page = await context.newPage();
  page.on('console', (message) => {
    // The browser's own favicon request is not the page's.
    if (message.type() === 'error' && !message.text().includes('404')) errors.push(message.text());
  });
  page.on('pageerror', (error) => errors.push(String(error)));
  await page.goto(plan.launchUrl, { timeout: TIMEOUT_MS });
  const caffeine = page.locator('input[id="caffeine-drinks/1/1"]');
  await caffeine.waitFor({ timeout: TIMEOUT_MS });
  await caffeine.focus();
  await page.keyboard.type('6');
  await page.locator('input[name="radiogroup_weakness/1/1"]').first().focus();
  await page.keyboard.press('Space');
  await page.locator('#submit').focus();
  await page.keyboard.press('Enter');
  await page.locator('#status.ok, #status.error').waitFor({ timeout: TIMEOUT_MS });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  await page.screenshot({ path: plan.screenshot, fullPage: true });
  result = { status: await page.locator('#status').textContent(), errors, overflow };
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result));
