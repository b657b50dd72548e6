#!/usr/bin/python3
"""The dashboard's timing in Debian's chromium (tests/web/bench runs it).

    bench.py URL USER PASSWORD GUESTS RUNS PROFILE_DIR

Logs in, loads the dashboard once to warm up, then RUNS times, each from a fresh
navigation; checks that it lists GUESTS guests; prints the medians (and min, max) of the
Navigation Timing and Paint Timing figures in milliseconds since the navigation started,
and the page's transferred and decoded sizes.
"""

import statistics
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

FIGURES = """
const n = performance.getEntriesByType("navigation")[0];
const p = performance.getEntriesByName("first-contentful-paint")[0];
return {ttfb: n.responseStart, data: n.responseEnd, dom: n.domContentLoadedEventEnd,
        fcp: p ? p.startTime : null, load: n.loadEventEnd,
        transfer: n.transferSize, decoded: n.decodedBodySize};
"""


def main():
    url, user, password, guests, runs, profile = sys.argv[1:7]
    guests, runs = int(guests), int(runs)
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1024", "--ignore-certificate-errors",
                "--disable-background-networking", "--disable-component-update",
                f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    opts.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(url + "/login")
        driver.find_element(By.NAME, "user").send_keys(user)
        driver.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.ID, "login").click()
        for _ in range(100):
            if driver.current_url.rstrip("/") == url:
                break
            time.sleep(0.1)
        else:
            sys.exit(f"bench: the login ended on {driver.current_url}")
        samples = []
        for i in range(runs + 1):
            driver.get("about:blank")
            driver.get(url + "/")
            rows = len(driver.find_elements(By.CSS_SELECTOR, "tr[id^='vm-']"))
            if rows != guests:
                sys.exit(f"bench: the dashboard lists {rows} guests, not {guests}")
            f = None
            for _ in range(50):
                f = driver.execute_script(FIGURES)
                if f["load"] and f["fcp"] is not None:
                    break
                time.sleep(0.1)
            if i > 0:
                samples.append(f)
        print(f"dashboard with {guests} guests, {runs} loads after a warm-up, chromium "
              f"{driver.capabilities.get('browserVersion')}:")
        for key, what in (("ttfb", "first byte"), ("data", "whole page (every row)"),
                          ("fcp", "first contentful paint"), ("dom", "DOMContentLoaded"),
                          ("load", "load event")):
            v = [s[key] for s in samples]
            print(f"  {what:26} median {statistics.median(v):7.1f} ms  "
                  f"(min {min(v):.1f}, max {max(v):.1f})")
        s = samples[-1]
        print(f"  page: {s['decoded'] / 1024:.1f} KiB of HTML, {s['transfer'] / 1024:.1f} KiB "
              "transferred")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
