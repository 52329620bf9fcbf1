// A reviewer in a real browser (Debian's Chromium, driven by
// playwright-core): opens the approval page link, signs in at the
// identity provider, reads the request and approves it.
// Usage: node approve.cjs REQUEST_URL EMAIL   (NODE_PATH finds playwright-core)
const { chromium } = require("playwright-core");

(async () => {

const [url, email] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage();
  await page.goto(url);
  // gavel's sign-in page; this reviewer signs in at the identity provider.
  await page.click("text=Sign in with your identity provider instead");
  await page.fill("#email", email);
  await Promise.all([page.waitForURL(url), page.click("button[type=submit]")]);
  const text = await page.textContent("main");
  if (!text.includes("Operation") || !text.includes("Decision")) {
    throw new Error(`not the approval page: ${text}`);
  }
  await page.fill("#comment", "approved from the browser");
  await page.click("button[value=approve]");
  await page.waitForSelector("p.ok");
  const done = await page.textContent("p.ok");
  console.log(JSON.stringify({ done, state: await page.textContent(".state") }));
} finally {
  await browser.close();
}
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
