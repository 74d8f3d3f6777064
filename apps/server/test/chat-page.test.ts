// The chat page at / in headless Chromium (Debian's, driven by puppeteer-core): type a message and
// watch the reply stream into the page; under greedy decoding it equals the API's answer.
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import puppeteer, { type Browser } from 'puppeteer-core';
import { MODEL, startServer, type Running } from './helpers.js';

const chromium = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const have = existsSync(chromium);
if (!have) console.warn(`chat page test skipped: no Chromium at ${chromium} (set CHROMIUM_PATH)`);

describe.skipIf(!have && !process.env.DSV3_REQUIRE_CHROMIUM)('chat page', () => {
  let s: Running;
  let browser: Browser;
  beforeAll(async () => {
    s = await startServer();
    browser = await puppeteer.launch({
      executablePath: chromium,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-dev-shm-usage',
      ],
    });
  }, 120_000);
  afterAll(async () => {
    await browser?.close();
    await s?.close();
  });

  it('streams the reply to a typed message', async () => {
    const page = await browser.newPage();
    await page.goto(`${s.url}/`);
    expect(await page.title()).toContain(MODEL);
    await page.$eval('#max', (el) => ((el as HTMLInputElement).value = '24'));
    await page.$eval('#temp', (el) => ((el as HTMLInputElement).value = '0'));
    // count the text updates the reply bubble goes through while streaming
    await page.evaluate(() => {
      (window as unknown as { updates: number }).updates = 0;
      new MutationObserver(() => (window as unknown as { updates: number }).updates++).observe(
        document.getElementById('log')!,
        { subtree: true, childList: true, characterData: true },
      );
    });
    await page.type('#input', 'Hello from the browser');
    await page.keyboard.press('Enter');
    await page.waitForSelector('.assistant[data-state="done"], .error', { timeout: 60_000 });
    expect(await page.$('.error')).toBeNull();
    const shown = await page.$eval('.assistant', (el) => el.textContent);
    const updates = await page.evaluate(() => (window as unknown as { updates: number }).updates);
    const want = await s.client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: 'Hello from the browser' }],
      max_tokens: 24,
      temperature: 0,
    });
    expect(shown).toBe(want.choices[0]!.message.content);
    expect(updates).toBeGreaterThan(3);
    expect(await page.$eval('.user', (el) => el.textContent)).toBe('Hello from the browser');
  }, 120_000);
});
