#!/usr/bin/env python3
"""Drives the chat's web page in a real browser (Debian's chromium, through
chromedriver and Selenium), as a person would: open the page, type a name,
type a message, and watch what the room says.

tests/browser.rs runs it against a live ``sockloop chat server --web-port``
and plays the rest of the room through a framed TCP client. The script
reports on stdout, one line per step, so the test can follow it:

    JOINED             the page says it is connected
    SENT               our message went out
    SEEN <text>        a message with exactly <text> is on the page
    TEXT-ONLY          every --expect text is shown as text: no element was
                       made from it and no script from it ran
    OFFLINE            (with --reconnect-expect) the page saw the server go
    RECONNECTED        ... and connected again by itself
    SEEN <text>        ... and a message sent after that is on the page
    DONE               all is well (after the screenshot, if one was asked)

Every wait is bounded (--timeout seconds). Exit codes: 0 all well, 1 a check
failed (the reason on stderr), 3 the browser or Selenium is missing (what to
install on stderr).

Usage: web_page.py URL --name NAME --send TEXT [--expect TEXT]...
                     [--reconnect-expect TEXT] [--screenshot PNG]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_HINT = (
    "install them with: apt-get install -y chromium chromium-driver && "
    "pip install selenium (or run scripts/test, which does)"
)


def say(line):
    print(line, flush=True)


def fail(why):
    print(f"web_page.py: {why}", file=sys.stderr, flush=True)
    sys.exit(1)


def wait_for(what, timeout, check):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    fail(f"timed out after {timeout} s waiting for {what}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--name", required=True)
    parser.add_argument("--send", required=True)
    parser.add_argument("--expect", action="append", default=[])
    parser.add_argument("--reconnect-expect")
    parser.add_argument("--screenshot")
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args()

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
    except ImportError:
        missing.append("the selenium Python package")
    if missing:
        print(f"web_page.py: missing {', '.join(missing)}; {INSTALL_HINT}", file=sys.stderr)
        sys.exit(3)

    profile = tempfile.mkdtemp(prefix="sockloop-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1000,720",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(args.timeout)
        driver.get(args.url)
        name = wait_for("the name field", args.timeout, lambda: driver.find_elements(By.ID, "name"))[0]
        name.clear()
        name.send_keys(args.name, Keys.ENTER)
        wait_for(
            "the page to say it is connected",
            args.timeout,
            lambda: "online" in driver.find_element(By.ID, "status").get_attribute("class"),
        )
        say("JOINED")
        text = driver.find_element(By.ID, "text")
        text.send_keys(args.send, Keys.ENTER)
        wait_for(
            "our own message on the page",
            args.timeout,
            lambda: any(e.text == args.send for e in driver.find_elements(By.CSS_SELECTOR, "#log li.mine .text")),
        )
        say("SENT")

        def shown(expected):
            # textContent, not .text: exactly what the page put there, tags and all.
            script = (
                "return Array.from(document.querySelectorAll('#log .text'))"
                ".some(e => e.textContent === arguments[0]);"
            )
            return driver.execute_script(script, expected)

        for expected in args.expect:
            wait_for(f"{expected!r} on the page", args.timeout, lambda: shown(expected))
            say(f"SEEN {expected}")
        elements = driver.execute_script(
            "return document.querySelectorAll('#log script, #log b, #log img, #log iframe').length;"
        )
        ran = driver.execute_script("return window.__pwned !== undefined;")
        if elements or ran:
            fail(f"text from the room became page content: {elements} element(s), script ran: {ran}")
        say("TEXT-ONLY")
        if args.reconnect_expect:
            status = lambda kind: kind in driver.find_element(By.ID, "status").get_attribute("class")
            wait_for("the page to see the server go", args.timeout, lambda: status("offline"))
            say("OFFLINE")
            wait_for("the page to reconnect", args.timeout, lambda: status("online"))
            say("RECONNECTED")
            wait_for(f"{args.reconnect_expect!r} on the page", args.timeout, lambda: shown(args.reconnect_expect))
            say(f"SEEN {args.reconnect_expect}")
        if args.screenshot:
            driver.save_screenshot(args.screenshot)
        say("DONE")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
