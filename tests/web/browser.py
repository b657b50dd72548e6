#!/usr/bin/python3
"""Issue 21's acceptance in a real browser: Debian's chromium (headless), driven by Debian's
chromium-driver through python3-selenium, against a hull-web in front of a real vmmd.

    browser.py URL USER PASSWORD IMAGE_UUID OUT_DIR [KERNEL]

Run by tests/tests/web.rs (root_the_console_works_in_chromium), which starts vmmd and
hull-web. Steps: plain http ends on the https login; a wrong password is refused there;
the right one opens the dashboard (host figures, guests); the create form's fields make a
joyent-minimal zone's payload from IMAGE_UUID, which is created; its page shows it reach
running; its console (xterm.js over a WebSocket) answers `hostname` typed into it, and
its Disconnect button ends it; stop; delete once confirmed; the dashboard no longer lists it. A screenshot of
each step goes to OUT_DIR. Exits non-zero naming the first step that failed.

With KERNEL (the test guest, images/testguest), IMAGE_UUID is a zvol image and the guest a
microVM: the form's fields (brand kvm) make its payload, to which the test guest is added as
the kernel in the payload's editor; its console shows the test guest's own checks passing.
"""

import json
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait


def fail(what):
    print(f"browser: {what}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) not in (6, 7):
        fail("usage: browser.py URL USER PASSWORD IMAGE_UUID OUT_DIR [KERNEL]")
    url, user, password, image, out = sys.argv[1:6]
    kernel = sys.argv[6] if len(sys.argv) == 7 else None
    name = "browser-vm" if kernel else "browser-zone"
    os.makedirs(out, exist_ok=True)
    # chromium's profile by its real path: chromedriver does not find a port file written
    # under a path with "..".
    out = os.path.realpath(out)
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1024", "--ignore-certificate-errors",
                f"--user-data-dir={out}/profile"):
        opts.add_argument(arg)
    opts.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.set_page_load_timeout(60)
    step = [0]

    def shot(name):
        step[0] += 1
        driver.save_screenshot(os.path.join(out, f"{step[0]:02d}-{name}.png"))

    def text(element_id):
        return driver.find_element(By.ID, element_id).text

    def click(element_id):
        """Clicks what posts a form or follows a link, and waits for the next page: a click
        returns before the browser has the answer (and its redirect)."""
        old = driver.find_element(By.TAG_NAME, "html")
        driver.find_element(By.ID, element_id).click()
        try:
            WebDriverWait(driver, 60).until(expected_conditions.staleness_of(old))
        except Exception:
            shot("no-next-page")
            fail(f"clicking {element_id} led to no new page: {driver.page_source[:2000]}")

    def wait_for(what, check, seconds=90, reload=True):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if reload:
                driver.refresh()
            try:
                if check():
                    return
            except Exception:  # the page between loads
                pass
            time.sleep(0.5)
        shot("timeout")
        fail(f"{what}: not within {seconds}s; the page says: {driver.page_source[:2000]}")

    try:
        # Plain http: the browser follows the redirect to https's login.
        driver.get(url.replace("https://", "http://", 1) + "/")
        if not driver.current_url.startswith(url + "/login"):
            fail(f"plain http ended on {driver.current_url}, not the https login")
        shot("login")
        # A wrong password, then the right one.
        driver.find_element(By.NAME, "user").send_keys(user)
        driver.find_element(By.NAME, "password").send_keys("not the password")
        click("login")
        if "Wrong user or password" not in text("message"):
            fail(f"a wrong password was not refused: {driver.page_source[:1000]}")
        shot("wrong-password")
        driver.find_element(By.NAME, "user").clear()
        driver.find_element(By.NAME, "user").send_keys(user)
        driver.find_element(By.NAME, "password").send_keys(password)
        click("login")
        if driver.current_url.rstrip("/") != url:
            fail(f"the login ended on {driver.current_url}")
        if "CPUs, load" not in text("host-cpu"):
            fail(f"no host figures on the dashboard: {driver.page_source[:1000]}")
        shot("dashboard")
        # The create form: its fields make the payload, which is created.
        click("nav-create")
        brand = "kvm" if kernel else "joyent-minimal"
        Select(driver.find_element(By.ID, "brand")).select_by_visible_text(brand)
        Select(driver.find_element(By.ID, "image")).select_by_value(image)
        driver.find_element(By.ID, "alias").send_keys(name)
        memory = driver.find_element(By.ID, "memory")
        memory.clear()
        memory.send_keys("64" if kernel else "128")
        click("fill")
        editor = driver.find_element(By.ID, "payload")
        payload = editor.get_attribute("value")
        if f'"image_uuid": "{image}"' not in payload or f'"alias": "{name}"' not in payload:
            fail(f"the form made {payload}")
        if kernel:
            # The payload's editor: the test guest as the kernel, held at its end until a
            # stop's Ctrl-Alt-Del.
            p = json.loads(payload)
            p.update({"kernel": kernel, "vcpus": 1,
                      "cmdline": "console=ttyS0 testguest.hold=kbd"})
            editor.clear()
            editor.send_keys(json.dumps(p, indent=2))
        shot("payload")
        click("validate")
        if "The payload is valid." not in text("message"):
            fail(f"the payload did not validate: {driver.page_source[:2000]}")
        click("create")
        if "/vms/" not in driver.current_url:
            fail(f"create ended on {driver.current_url}: {driver.page_source[:2000]}")
        uuid = driver.current_url.rstrip("/").rsplit("/", 1)[1]
        if text("guest") != name:
            fail(f"the guest's page is titled {text('guest')!r}")
        shot("created")
        # It runs (a zone with autoboot starts at create; otherwise start it here).
        if driver.find_elements(By.ID, f"start-{uuid}"):
            click(f"start-{uuid}")
        wait_for("the guest running", lambda: text("prop-state") == "running")
        shot("running")
        # Its console: xterm.js on a WebSocket through hull-web and vmmd.
        click(f"console-{uuid}")
        wait_for("the console connected", lambda: text("console-status") == "connected",
                 seconds=30, reload=False)

        def lines():
            return [l.strip() for l in
                    driver.find_element(By.CSS_SELECTOR, ".xterm-rows").text.splitlines()]
        if kernel:
            # The test guest's checks, as it printed them on its serial console.
            wait_for("the test guest's checks on its console",
                     lambda: "testguest: ALL PASS" in lines(), seconds=60, reload=False)
        else:
            # `hostname` typed into the shell on the zone's console answers with the zone's
            # (its uuid, as on SmartOS), on a line of its own after the command.
            driver.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea").send_keys("hostname\n")

            def answered():
                got = lines()
                return any(l.endswith("hostname") and n + 1 < len(got) and got[n + 1] == uuid
                           for n, l in enumerate(got))
            wait_for("the zone's hostname on its console", answered, seconds=30, reload=False)
        shot("console")
        driver.find_element(By.ID, "console-detach").click()
        wait_for("the console disconnected by its button",
                 lambda: text("console-status").startswith("disconnected"), seconds=10,
                 reload=False)
        driver.get(f"{url}/vms/{uuid}")
        click(f"stop-{uuid}")
        wait_for("the guest stopped", lambda: text("prop-state") == "stopped")
        shot("stopped")
        # Delete: the browser will not post the form before its box is ticked.
        driver.find_element(By.ID, f"delete-{uuid}").click()
        time.sleep(1)
        if "/vms/" not in driver.current_url or text("prop-state") != "stopped":
            fail("delete went ahead without its confirmation")
        driver.find_element(By.ID, "delete-confirm").click()
        click(f"delete-{uuid}")
        if driver.current_url.rstrip("/") != url:
            fail(f"delete ended on {driver.current_url}: {driver.page_source[:2000]}")
        if driver.find_elements(By.ID, f"vm-{uuid}"):
            fail("the dashboard still lists the deleted guest")
        shot("deleted")
        # Logged out, the pages send to the login again.
        click("logout")
        driver.get(url + "/")
        if not driver.current_url.startswith(url + "/login"):
            fail(f"after logging out / opened {driver.current_url}")
        shot("logged-out")
        print(f"browser: {step[0]} steps passed in chromium {driver.capabilities.get('browserVersion')}")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
