// node live_check.mjs URL SCREENSHOT.png: opens the live page of `python -m sdetalk_jax.stream
// --serve` in headless Chromium (Debian's, via playwright-core), waits until the stream has ended,
// takes a screenshot and prints JSON: the page's errors, the frames it showed, the last frame's
// index, whether the end came, and how many pixels are lit (the face drawn).
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-quic",
  ],
});
const consoleErrors = [];
try {
  const page = await browser.newPage({ viewport: { width: 480, height: 560 } });
  page.on("console", (message) => message.type() === "error" && consoleErrors.push(message.text()));
  page.on("pageerror", (error) => consoleErrors.push(String(error)));
  await page.goto(url);
  await page.waitForFunction(() => window.live && (window.live.ended || window.live.errors.length), null, { timeout: 240000 });
  const result = await page.evaluate(() => {
    const canvas = document.getElementById("view");
    const copy = document.createElement("canvas");
    copy.width = canvas.width;
    copy.height = canvas.height;
    const context = copy.getContext("2d");
    context.drawImage(canvas, 0, 0);
    const data = context.getImageData(0, 0, copy.width, copy.height).data;
    let lit = 0;
    for (let i = 0; i < data.length; i += 4) if (data[i] + data[i + 1] + data[i + 2] > 3 * 0x50) lit++;
    return { errors: window.live.errors, frames: window.live.frames, last_frame: window.live.lastFrame,
             ended: window.live.ended, lit, pixels: data.length / 4,
             status: document.getElementById("status").textContent };
  });
  await page.screenshot({ path: screenshot });
  process.stdout.write(JSON.stringify({ ...result, console: consoleErrors }) + "\n");
} finally {
  await browser.close();
}
