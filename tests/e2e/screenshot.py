"""Log in to Label Studio with headless Chromium, open a page and save a screenshot.

Runs in the Label Studio virtual environment (which has Playwright):
    python screenshot.py CHROMIUM LS_URL EMAIL PASSWORD PAGE OUT.png
"""

import sys

from playwright.sync_api import sync_playwright


def main() -> None:
    chromium, url, email, password, page_path, out = sys.argv[1:7]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{url}/user/login/")
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_url(lambda u: "/login" not in u, timeout=60_000)
        page.goto(url + page_path)
        # The labelling canvas, then a moment for the brush RLE to be decoded and drawn.
        page.wait_for_selector("canvas", timeout=90_000)
        page.wait_for_timeout(5_000)
        page.screenshot(path=out, full_page=False)
        browser.close()


if __name__ == "__main__":
    main()
