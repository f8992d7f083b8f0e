"""The admin console in a real browser: headless Chromium (Debian's chromium and
chromium-driver) driven by Selenium against the e2e stack's control plane.

A person signs in with the admin token, creates an organisation, grants it credits, creates a
user and issues a key (read from the page), makes a metered call with that key through Envoy,
and sees the call in the usage chart and table. A wrong token, an expired session and a
cross-site form post are refused. A screenshot of each page is written to the directory the
test prints (pytest's temporary directory, or OPSGATE_SCREENSHOTS when set).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from conftest import ADMIN_TOKEN, BIN_DIR, Stack, auth

CHROMIUM = os.environ.get("OPSGATE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("OPSGATE_CHROMEDRIVER", "/usr/bin/chromedriver")

if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
    pytest.skip(f"chromium or chromedriver not installed ({CHROMIUM}, {CHROMEDRIVER})", allow_module_level=True)

# Installed from e2e/requirements.txt: a missing selenium is a broken set-up, not a skip.
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    where = os.environ.get("OPSGATE_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    global FAILURES
    FAILURES = path
    print(f"\nconsole screenshots: {path}")
    return path


@pytest.fixture
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1100", "--no-first-run", "--disable-extensions"]:
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, timeout=15):
    """`condition` until it holds; pages redraw themselves, so a vanished element is retried."""
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)).until(condition)


def attr(driver, selector: str, name: str) -> str:
    return wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, selector).get_attribute(name))


def texts(driver, selector: str) -> list[str]:
    return wait(driver, lambda d: [c.text for c in d.find_elements(By.CSS_SELECTOR, selector)] or None)


FAILURES = Path(tempfile.gettempdir())


def css(driver, selector, timeout=15):
    try:
        return wait(driver, EC.visibility_of_element_located((By.CSS_SELECTOR, selector)), timeout)
    except Exception:
        # What the page looked like, for whoever reads the failure.
        driver.save_screenshot(str(FAILURES / "console-failure.png"))
        (FAILURES / "console-failure.html").write_text(driver.page_source)
        print(f"waiting for {selector!r} failed; the page is in {FAILURES}/console-failure.*")
        raise


def page(driver, name: str):
    """Opens a console page and waits until it has drawn itself."""
    driver.execute_script("location.hash = arguments[0]", name)
    return css(driver, f"#page-{name}[data-ready]")


def fill(driver, form: str, values: dict):
    for name, value in values.items():
        field = driver.find_element(By.ID, f"{form}-{name}")
        if field.tag_name == "select":
            Select(field).select_by_value(value)
        else:
            field.clear()
            field.send_keys(value)
    driver.find_element(By.CSS_SELECTOR, f"#{form} button[type=submit]").click()


def status_says(driver, text: str):
    wait(driver, lambda d: text in d.find_element(By.ID, "status").text)


def sign_in(driver, base: str, token: str):
    driver.get(f"{base}/console/")
    field = css(driver, "#admin-token")
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#sign-in-form button[type=submit]").click()


def usage_filter(driver, text: str):
    """Types into the usage page's filter and submits it (as Enter does)."""
    driver.execute_script(
        "const f = document.getElementById('usage-filter'); f.value = arguments[0]; f.form.requestSubmit();", text)


def fetch_status(driver, method: str, path: str) -> int:
    """A request from the console's own page, with its cookie and header."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[1], {method: arguments[0], headers: {'X-Console-Request': '1'}})"
        ".then(r => done(r.status), e => done(String(e)));", method, path)


def admin_get(base: str, path: str):
    r = httpx.get(f"{base}{path}", headers=auth(ADMIN_TOKEN), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_the_console_from_sign_in_to_a_metered_call_on_the_chart(stack, browser, shots):
    base = f"http://127.0.0.1:{stack.cp_port}"
    suffix = os.urandom(3).hex()
    org, user = f"org_console_{suffix}", f"console_user_{suffix}"

    # A wrong token is refused, and leaves no cookie.
    sign_in(browser, base, "not-the-admin-token")
    wait(browser, lambda d: "refused" in d.find_element(By.ID, "sign-in-error").text)
    assert "not the admin token" in browser.find_element(By.ID, "sign-in-error").text
    assert not [c for c in browser.get_cookies() if c["name"] == "opsgate_console"]
    browser.save_screenshot(str(shots / "01-sign-in-refused.png"))

    # The right one: an HttpOnly, SameSite=Strict cookie; the token kept nowhere else.
    browser.find_element(By.ID, "admin-token").send_keys(ADMIN_TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#sign-in-form button[type=submit]").click()
    css(browser, "#page-orgs[data-ready]")
    [cookie] = [c for c in browser.get_cookies() if c["name"] == "opsgate_console"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict", cookie
    kept = browser.execute_script(
        "return document.cookie + JSON.stringify(localStorage) + JSON.stringify(sessionStorage)"
        " + document.getElementById('admin-token').value")
    assert ADMIN_TOKEN not in kept and "opsgate_console" not in kept
    assert "console:admin-token" in browser.find_element(By.ID, "who").text
    # The demo organisation is there.
    css(browser, "#orgs-table tr[data-org=org_demo]")

    # Create an organisation, then grant it credits.
    fill(browser, "create-org", {"id": org, "name": f"Console {suffix}", "plan": "enterprise"})
    css(browser, f"#page-orgs[data-ready] #orgs-table tr[data-org={org}]")
    browser.find_element(By.XPATH, f"//button[normalize-space()='Details of {org}']").click()
    css(browser, "#grant-credits")
    fill(browser, "grant", {"credits": "250"})
    css(browser, f"#page-orgs[data-ready] #orgs-table tr[data-org={org}]")
    wait(browser, lambda d: "250.000" in d.find_element(By.CSS_SELECTOR, f"#orgs-table tr[data-org={org}]").text)
    browser.find_element(By.XPATH, f"//button[normalize-space()='Details of {org}']").click()
    css(browser, "#members-table")
    browser.save_screenshot(str(shots / "02-organisations.png"))

    # Create a user and issue a key, shown once on the page.
    page(browser, "users")
    fill(browser, "create-user", {"id": user, "org_id": org, "plan": "professional", "kind": "user"})
    page(browser, "users")
    css(browser, "#users-table")
    wait(browser, lambda d: user in d.find_element(By.ID, "users-table").text)
    browser.find_element(By.XPATH, f"//button[normalize-space()='Issue a key for {user}']").click()
    key = css(browser, "#issued-key").text.strip()
    assert key.startswith("uc_") and len(key) == 67, key
    browser.save_screenshot(str(shots / "03-users-key-issued.png"))

    # A metered call with that key, through Envoy.
    r = httpx.post(f"{stack.api}/chat/completions", headers=auth(key), timeout=30,
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello from the console test"}]})
    assert r.status_code == 200, r.text
    cost = float(r.headers["x-cost-incurred"])
    assert cost > 0
    deadline = time.time() + 15
    while time.time() < deadline and not any(x["key"] == org for x in admin_get(base, "/admin/v1/usage/daily?days=7&by=org")):
        time.sleep(0.3)

    # The call on the usage page: in the chart (a bar of this organisation) and the table.
    page(browser, "usage")
    Select(browser.find_element(By.ID, "usage-days")).select_by_value("7")
    css(browser, "#page-usage[data-ready][data-days='7']")
    usage_filter(browser, org)
    ready = f"#page-usage[data-ready][data-days='7'][data-by=org][data-filter='{org}']"
    css(browser, ready)
    assert int(float(attr(browser, f"{ready} #chart-calls rect[data-key='{org}']", "data-value"))) == 1
    spent = float(attr(browser, f"{ready} #chart-credits rect[data-key='{org}']", "data-value"))
    assert round(spent, 3) == round(cost, 3)
    cells = texts(browser, f"{ready} #daily-table tr[data-key='{org}'] td")
    assert cells[1] == org and cells[2] == "1" and cells[4] == f"{cost:.3f}", cells
    assert org in browser.find_element(By.ID, "report-orgs").text
    assert user in browser.find_element(By.ID, "report-top-users").text
    browser.save_screenshot(str(shots / "04-usage.png"))
    # By user, the same call under the user.
    Select(browser.find_element(By.ID, "usage-by")).select_by_value("user")
    css(browser, "#page-usage[data-ready][data-by=user]")
    usage_filter(browser, user)
    assert attr(browser, f"#page-usage[data-ready][data-filter='{user}'] #chart-calls rect[data-key='{user}']", "data-value") == "1"

    # The other pages.
    page(browser, "service-keys")
    assert "loopnet-service" in browser.find_element(By.ID, "service-keys-table").text
    browser.save_screenshot(str(shots / "05-service-keys.png"))
    page(browser, "provider-keys")
    text = browser.find_element(By.ID, "provider-keys-table").text
    assert "openai" in text and "e2e-platform-key-canary" not in browser.page_source
    browser.save_screenshot(str(shots / "06-provider-keys.png"))
    page(browser, "audit")
    browser.find_element(By.ID, "audit-filter").send_keys(org)
    audit = browser.find_element(By.ID, "audit-table").text
    assert "console:admin-token" in audit and "grant" in audit, audit
    browser.save_screenshot(str(shots / "07-audit.png"))

    # Everything went through the admin API, audited as the console.
    actors = {e["actor"] for e in admin_get(base, "/admin/v1/audit?limit=200") if e["target"] in (org, user)}
    assert actors == {"console:admin-token"}, actors

    # Signing out ends the session.
    browser.find_element(By.ID, "sign-out").click()
    css(browser, "#sign-in")
    assert fetch_status(browser, "GET", "/admin/v1/orgs") == 401


class CrossSite:
    """A page on another site (localhost, while the console is on 127.0.0.1) with a form that
    posts JSON as text/plain to the admin API: the classic cross-site request forgery."""

    def __init__(self, target: str, org: str):
        name = '{"id":"%s","name":"x' % org
        value = '","plan":"enterprise"}'
        html = (f"<!doctype html><form id=f method=post enctype=text/plain action='{target}/admin/v1/orgs'>"
                f"<input type=hidden name='{name}' value='{value}'><button id=go>go</button></form>").encode()

        class Page(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(html)))
                self.end_headers()
                self.wfile.write(html)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
        self.url = f"http://localhost:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def test_a_cross_site_form_post_is_refused(stack, browser, shots):
    base = f"http://127.0.0.1:{stack.cp_port}"
    org = f"org_csrf_{os.urandom(3).hex()}"
    sign_in(browser, base, ADMIN_TOKEN)
    css(browser, "#page-orgs[data-ready]")
    evil = CrossSite(base, org)
    try:
        browser.get(evil.url)
        browser.find_element(By.ID, "go").click()
        wait(browser, lambda d: d.current_url.startswith(base))
        body = browser.find_element(By.TAG_NAME, "body").text
        assert '"error"' in body, body
        browser.save_screenshot(str(shots / "08-cross-site-post-refused.png"))
    finally:
        evil.stop()
    assert all(o["id"] != org for o in admin_get(base, "/admin/v1/orgs"))
    # The console itself still works (the session was not the problem).
    browser.get(f"{base}/console/")
    css(browser, "#page-orgs[data-ready]")


def test_an_expired_session_is_refused(browser, shots):
    """A control plane of its own whose console sessions last two seconds."""
    with tempfile.TemporaryDirectory(prefix="opsgate-console-") as tmp:
        log = open(Path(tmp) / "control-plane.log", "w")
        p = subprocess.Popen(
            [str(BIN_DIR / "opsgate"), "serve", "--demo", "--port", "0", "--data-dir", tmp,
             "--admin-token", ADMIN_TOKEN, "--console-session-ttl-secs", "2"],
            stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        try:
            port = Stack._port_from(p, "control-plane")
            base = f"http://127.0.0.1:{port}"
            sign_in(browser, base, ADMIN_TOKEN)
            css(browser, "#page-orgs[data-ready]")
            assert fetch_status(browser, "GET", "/admin/v1/orgs") == 200
            time.sleep(3)
            assert fetch_status(browser, "GET", "/admin/v1/orgs") == 401
            assert fetch_status(browser, "POST", "/admin/v1/service-keys/mint") == 401
            page_link = browser.find_element(By.CSS_SELECTOR, "nav a[href='#audit']")
            page_link.click()
            message = css(browser, "#sign-in-error")
            wait(browser, lambda d: "session has ended" in message.text)
            browser.save_screenshot(str(shots / "09-session-expired.png"))
        finally:
            p.terminate()
            p.wait(timeout=10)
            log.close()
