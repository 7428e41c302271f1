// node check.mjs URL SCREENSHOT.png T1 T2: opens the viewer page in headless Chromium (Debian's, via
// playwright-core), waits until the export is loaded, reads where it opened and whether it plays
// (its time 0.5 s later), renders it at times T1 and T2 and prints JSON: the page's errors, the
// animation's duration, the times, and how many pixels differ between the two times. With T1 "-",
// the first picture is the page as it opened (at ?t=...), not seeked.
import { chromium } from "playwright-core";

const [url, screenshot, first, second] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-quic", "--autoplay-policy=no-user-gesture-required",
  ],
});
const consoleErrors = [];
try {
  const page = await browser.newPage({ viewport: { width: 480, height: 560 } });
  page.on("console", (message) => message.type() === "error" && consoleErrors.push(message.text()));
  page.on("pageerror", (error) => consoleErrors.push(String(error)));
  await page.goto(url);
  await page.waitForFunction(() => window.viewer && (window.viewer.ready || window.viewer.errors.length), null, { timeout: 60000 });
  const opened = await page.evaluate(() => ({ time: window.viewer.time, muted: window.viewer.muted }));
  await page.waitForTimeout(500);
  const later = await page.evaluate(() => ({ time: window.viewer.time, playing: window.viewer.playing }));
  const result = await page.evaluate(([t1, t2]) => {
    const canvas = document.getElementById("view");
    const pixels = (time) => {
      if (time !== null) window.viewer.seek(time);
      const copy = document.createElement("canvas");
      copy.width = canvas.width;
      copy.height = canvas.height;
      const context = copy.getContext("2d");
      context.drawImage(canvas, 0, 0);
      return context.getImageData(0, 0, copy.width, copy.height).data;
    };
    const a = pixels(t1);
    const b = pixels(t2);
    let differing = 0;
    let lit = 0;
    for (let i = 0; i < a.length; i += 4) {
      if (Math.abs(a[i] - b[i]) + Math.abs(a[i + 1] - b[i + 1]) + Math.abs(a[i + 2] - b[i + 2]) > 12) differing++;
      if (a[i] + a[i + 1] + a[i + 2] > 3 * 0x50) lit++;
    }
    return {
      ready: window.viewer.ready, errors: window.viewer.errors, duration: window.viewer.duration,
      extras: window.viewer.extras || null, pixels: a.length / 4, differing, lit,
    };
  }, [first === "-" ? null : Number(first), Number(second)]);
  await page.evaluate((t) => window.viewer.seek(t), Number(second));
  await page.screenshot({ path: screenshot });
  process.stdout.write(JSON.stringify({
    ...result, opened_at: opened.time, muted: opened.muted, time_later: later.time,
    playing: later.playing, console: consoleErrors,
  }) + "\n");
} finally {
  await browser.close();
}
