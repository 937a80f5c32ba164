// The open-incident page in a real browser (Debian's chromium, driven by playwright-core),
// for tests/tests/view.rs. Usage: node page.cjs <page url> <screenshot path>
//
// Prints one JSON line with the rows it sees (dedup key and link targets), takes the
// screenshot, prints READY, then waits for one line on stdin naming what should change
// ({"appear": key, "disappear": key}) and prints {"changed_ms": N} once the page shows it
// without a reload, or fails after 5 s.
"use strict";
const fs = require("fs");
const readline = require("readline");
const { chromium } = require("playwright-core");

async function rows(page) {
  return page.$$eval("tbody#incidents tr", (trs) =>
    trs.map((tr) => ({
      dedupKey: tr.dataset.dedupKey,
      links: Array.from(tr.querySelectorAll("a")).map((a) => a.href),
    })),
  );
}

async function main() {
  const [url, screenshot] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 700 } });
    const external = [];
    page.on("request", (request) => {
      if (!request.url().startsWith(new URL(url).origin)) external.push(request.url());
    });
    await page.goto(url, { waitUntil: "load" });
    // Marks this document: a reload would lose it.
    await page.evaluate(() => { window.hookfoldMark = 1; });
    console.log(JSON.stringify({ rows: await rows(page), external }));
    await page.screenshot({ path: screenshot, fullPage: true });
    console.log("READY");
    const line = await new Promise((resolve) => {
      readline.createInterface({ input: process.stdin }).once("line", resolve);
    });
    const { appear, disappear } = JSON.parse(line);
    const started = Date.now();
    await page.waitForFunction(
      ([appear, disappear]) => {
        const keys = Array.from(document.querySelectorAll("tbody#incidents tr")).map(
          (tr) => tr.dataset.dedupKey,
        );
        return keys.includes(appear) && !keys.includes(disappear);
      },
      [appear, disappear],
      { timeout: 5000, polling: 100 },
    );
    const changed_ms = Date.now() - started;
    const reloaded = await page.evaluate(() => window.hookfoldMark !== 1);
    console.log(JSON.stringify({ changed_ms, reloaded, rows: await rows(page), external }));
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(String(e && e.stack ? e.stack : e));
  process.exit(1);
});
